"""The one small interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.core.futures import JobFuture
    from dc_jupyter.core.job import Job


class Backend(ABC):
    """Where jobs run. A new backend is one module with one subclass.

    ``submit`` must return at once with a ``JobFuture`` whose inner future's
    result is the blob returned by ``remote_job.run_job(payload, *dep_blobs)``.
    """

    name: str = "backend"

    def submit(self, job: Job) -> JobFuture:
        """Pickle ``job``, start it (and its dependencies) and return its handle."""
        payload, deps = job.prepare()
        return self.submit_prepared(job, payload, deps)

    @abstractmethod
    def submit_prepared(self, job: Job, payload: bytes, deps: list[Job]) -> JobFuture:
        """Start a job already pickled by ``job.prepare()`` and return its handle."""

    def describe(self) -> str:
        """One line saying where work goes, for ``%distribute`` and widgets."""
        return self.name

    # -- maps: batches of items (see core.map.MapFuture) ----------------------
    def slots(self) -> int:
        """How many batches can run at the same time (worker threads)."""
        return 1

    def open_map(self, function_blob: bytes, options: Any, name: str = "map") -> BatchChannel:
        """A channel for one map's batches; the function was pickled once, here."""
        return BatchChannel(function_blob)


class BatchChannel:
    """Sends the batches of one map. This default runs each batch here, at once.

    ``send`` returns a future (``concurrent.futures`` or Dask) whose result is
    the blob of ``remote_job.run_batch``; ``close`` releases what the map shared.
    """

    def __init__(self, function_blob: bytes) -> None:
        self.function_blob = function_blob

    def send(self, items_blob: bytes, key: str) -> Any:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(remote_job.run_batch(self.function_blob, items_blob))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def failure(self, exc: Exception, name: str, future: Any) -> Exception | None:
        """A clearer error for a batch that failed as a whole with ``exc``, or None.

        One with ``dc_jupyter_crash = True`` says the process running it died:
        the map then runs each of its items alone, so only the bad one fails.
        """
        return None

    def lost_scheduler(self, future: Any) -> bool:
        """True if ``future`` was cancelled because the cluster's scheduler is gone."""
        return False

    def cancel(self, futures: list[Any]) -> None:
        """Cancel batches in flight (queued and, where the backend can, running)."""
        for future in futures:
            future.cancel()

    def close(self) -> None:
        pass
