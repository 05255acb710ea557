"""The default backend: Dask distributed, on whatever cluster ``connection`` finds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _worker, connection
from ..handle import JobFuture
from .base import Backend

if TYPE_CHECKING:
    from ..decorator import JobOptions
    from ..job import Job

_TASK = _worker.shippable_task()


class DaskBackend(Backend):
    """Submits ``run_job(payload, *dependency_futures)`` with a readable key.

    Dependencies are submitted first and passed as Dask futures, so their
    results move from worker to worker and never through the notebook.
    """

    name = "dask"

    def __init__(self, options: JobOptions | None = None) -> None:
        self.options = options

    def client(self) -> Any:
        opts = self.options
        if opts is None:
            return connection.current_client()
        return connection.current_client(
            client=opts.client, cluster=opts.cluster, address=opts.address
        )

    def submit_prepared(self, job: Job, payload: bytes, deps: list[Job]) -> JobFuture:
        client = self.client()
        dep_handles = [self.submit(dep) for dep in deps]
        opts = job.function.options
        future = client.submit(
            _TASK,
            payload,
            *[h._inner for h in dep_handles],
            key=job.key,
            pure=False,
            retries=opts.retries or None,
            resources=dict(opts.resources) or None,
        )
        return JobFuture(future, name=job.name, key=job.key, keep=tuple(dep_handles))

    def describe(self) -> str:
        return f"dask {self.client().scheduler.address}"
