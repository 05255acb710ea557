"""The one small interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..handle import JobFuture
    from ..job import Job


class Backend(ABC):
    """Where jobs run. A new backend is one module with one subclass.

    ``submit`` must return at once with a ``JobFuture`` whose inner future's
    result is the blob returned by ``_worker.run_job(payload, *dep_blobs)``.
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
