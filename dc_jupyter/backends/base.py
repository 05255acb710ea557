"""The one small interface every backend implements, and the registry that names them.

The core reaches backends only through this module: ``resolve_backend`` turns a
``backend=`` option into a ``Backend`` with the factories that
``dc_jupyter.backends`` registers ("dask", "local", any ``Executor``), so the
core never imports a concrete backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from dc_jupyter import config
from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.core.futures import JobFuture
    from dc_jupyter.core.job import Job


class Backend(ABC):
    """Where jobs run. A new backend is one module with one subclass.

    The core walks a job's dependencies once, submits each to its own backend,
    and then calls ``start`` with the job pickled and its inputs ready.
    """

    name: str = "backend"

    def check(self, options: Any, name: str) -> None:  # noqa: B027 - optional hook
        """Refuse work this backend could never run, before anything is sent."""

    def ensure_modules(self, names: set[str], what: str) -> None:  # noqa: B027 - optional hook
        """Make the top-level modules ``names`` importable where ``what`` will run, or
        raise naming the missing ones, before anything is sent."""

    def scatter_above(self) -> int | None:
        """Arguments larger than this many bytes go as ``remote_job.Scattered``; None: never."""
        return None

    def owns(self, handle: JobFuture) -> bool:
        """Whether ``start`` takes this dependency handle as it is (e.g. a Dask future of
        the same client, whose result moves worker to worker). Otherwise the core
        waits for it and passes its result bytes."""
        return False

    @abstractmethod
    def start(self, job: Job, payload: bytes, inputs: list[Any]) -> JobFuture:
        """Start ``job`` at once and return its handle.

        ``payload`` is for ``remote_job.run_job(payload, *inputs)``; each input is
        the result bytes of a dependency, a handle this backend ``owns``, or a
        ``remote_job.Scattered`` argument. The handle's inner future's result
        is the blob ``run_job`` returns.
        """

    # -- many jobs at once (see core.many) --------------------------------------
    def batch_key(self) -> Any:
        """Backends with equal keys take each other's jobs in one ``start_many``."""
        return self

    def start_many(self, entries: list[Entry]) -> list[JobFuture]:
        """Start many jobs, dependencies before dependents; return their handles in order.

        In an entry's inputs, ``Pending(i)`` stands for the handle of entry ``i``
        of the same list (an earlier one). This default starts them one by one;
        a backend that can send them in one message overrides it.
        """
        handles: list[JobFuture] = []
        for entry in entries:
            inputs = [handles[v.index] if isinstance(v, Pending) else v for v in entry.inputs]
            handles.append(entry.backend.start(entry.job, entry.payload, inputs))
        return handles

    # -- maps: batches of items (see core.map.MapFuture) ----------------------
    def slots(self) -> int:
        """How many batches can run at the same time (worker threads)."""
        return 1

    def open_map(self, function_blob: bytes, options: Any, name: str = "map") -> BatchChannel:
        """A channel for one map's batches; the function was pickled once, here."""
        return BatchChannel(function_blob, retries=options.retries)


class Pending:
    """In ``start_many``: the handle of entry ``index``, started in the same call."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class Entry:
    """One job for ``start_many``: where it runs, its payload and its inputs (see ``start``)."""

    __slots__ = ("backend", "job", "payload", "inputs")

    def __init__(self, backend: Backend, job: Job, payload: bytes, inputs: list[Any]) -> None:
        self.backend, self.job, self.payload, self.inputs = backend, job, payload, inputs


class BatchChannel:
    """Sends the batches of one map. This default runs each batch here, at once.

    ``send`` returns a future (``concurrent.futures`` or Dask) whose result is
    the blob of ``remote_job.run_batch``; ``close`` releases what the map shared.
    ``retries``: how often a failing item is run again before its error counts;
    ``budget``: seconds after which the batch stops and hands back the items it
    did not reach (``remote_job.run_batch``); ``worker``: where the map would
    like the batch to run (a hint; backends without ``workers`` ignore it).
    """

    #: Each item is its one argument, not a tuple of arguments (``MapJob.single``).
    single = False
    #: Worker address -> threads, when the map may say where each batch goes
    #: (``send(..., worker=)``, see ``core.placement``); empty: the backend places them.
    workers: dict[str, int] = {}  # noqa: RUF012 - never mutated, replaced per channel

    def __init__(self, function_blob: bytes, retries: int = 0) -> None:
        self.function_blob = function_blob
        self.retries = retries

    def send(
        self,
        items_blob: bytes,
        key: str,
        budget: float | None = None,
        worker: str | None = None,
    ) -> Any:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(
                remote_job.run_batch(
                    self.function_blob,
                    items_blob,
                    item_retries=self.retries,
                    budget=budget,
                    single=self.single,
                )
            )
        except Exception as exc:
            future.set_exception(exc)
        return future

    def send_many(self, requests: list[tuple]) -> list[Any]:
        """``send`` each of ``requests`` (its arguments, in order); one future each.

        Backends where sending costs a round trip send them together."""
        return [self.send(*request) for request in requests]

    def when_arrived(self, future: Any, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` when the batch's result is here ahead of ``future``
        being done (``gather`` has it then), if it can be (Dask's pushed results).
        Here it cannot: the future is done when its result is."""

    def failure(self, exc: Exception, name: str, future: Any) -> Exception | None:
        """A clearer error for a batch that failed as a whole with ``exc``, or None.

        One with ``dc_jupyter_crash = True`` says the process running it died:
        the map then runs each of its items alone, so only the bad one fails.
        """
        return None

    def lost_scheduler(self, future: Any) -> bool:
        """True if ``future`` was cancelled because the cluster's scheduler is gone."""
        return False

    #: True when fetching a result costs a round trip: the map then fetches
    #: finished batches together with ``gather``, from a thread of its own.
    fetch_together = False

    def gather(self, futures: list[Any]) -> dict[int, Any]:
        """Result blobs of those ``futures`` that finished well (fetched in one
        call) or whose result arrived ahead of them (``when_arrived``), by
        position; the map fetches the others one by one."""
        return {}

    def cancel(self, futures: list[Any]) -> None:
        """Cancel batches in flight (queued and, where the backend can, running)."""
        for future in futures:
            future.cancel()

    def close(self) -> None:
        pass


# -- which backend: a name, an Executor, a Backend ---------------------------------

_BY_NAME: dict[str, Callable[[Any], Backend]] = {}
_BY_TYPE: list[tuple[type, Callable[[Any, Any], Backend]]] = []


def register_backend(name: str, factory: Callable[[Any], Backend]) -> None:
    """Make ``backend=name`` mean ``factory(options)``."""
    _BY_NAME[name] = factory


def register_backend_type(kind: type, factory: Callable[[Any, Any], Backend]) -> None:
    """Make ``backend=<an instance of kind>`` mean ``factory(instance, options)``."""
    _BY_TYPE.append((kind, factory))


def resolve_backend(options: Any) -> Backend:
    """A backend from ``options.backend``: a name, an ``Executor`` or a ``Backend``."""
    spec = options.backend if options.backend is not None else config.get("backend", "dask")
    if isinstance(spec, Backend):
        return spec
    for kind, factory in _BY_TYPE:
        if isinstance(spec, kind):
            return factory(spec, options)
    if isinstance(spec, str) and spec in _BY_NAME:
        return _BY_NAME[spec](options)
    raise ValueError(
        f"Unknown backend {spec!r}: use 'dask', 'local', a concurrent.futures.Executor "
        "(e.g. ProcessPoolExecutor()) or a dc_jupyter.backends.Backend instance."
    )
