"""Backend for any ``concurrent.futures.Executor`` (threads, processes, ...)."""

from __future__ import annotations

from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from dc_jupyter.backends.base import Backend, BatchChannel
from dc_jupyter.core.futures import JobFuture
from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.core.job import Job


class ExecutorBackend(Backend):
    """Runs each job as ``executor.submit(run_job, payload, *dependency_results)``.

    Dependencies are submitted first; the dependent job waits for their results
    before it is handed to the executor, so a pool of one worker cannot
    deadlock waiting on itself.
    """

    name = "executor"

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def submit_prepared(self, job: Job, payload: bytes, deps: list[Job]) -> JobFuture:
        dep_handles = [self.submit(dep) for dep in deps]
        if not dep_handles:
            inner = self.executor.submit(remote_job.run_job, payload)
        else:
            inner = _chain(
                [h._inner for h in dep_handles],
                lambda blobs: self.executor.submit(remote_job.run_job, payload, *blobs),
            )
        return JobFuture(inner, name=job.name, key=job.key, keep=tuple(dep_handles))

    def describe(self) -> str:
        return f"executor {type(self.executor).__name__}"

    def slots(self) -> int:
        return getattr(self.executor, "_max_workers", None) or 1

    def open_map(self, function_blob: bytes, options: Any, name: str = "map") -> BatchChannel:
        return _ExecutorBatches(self.executor, function_blob)


class _ExecutorBatches(BatchChannel):
    def __init__(self, executor: Executor, function_blob: bytes) -> None:
        super().__init__(function_blob)
        self.executor = executor

    def send(self, items_blob: bytes, key: str) -> Future:
        return self.executor.submit(remote_job.run_batch, self.function_blob, items_blob)


def _chain(deps: list[Future], start) -> Future:
    """A future that starts ``start(dep_results)`` once every dep is done."""
    outer: Future = Future()
    remaining = [len(deps)]

    def on_dep_done(_f: Future) -> None:
        remaining[0] -= 1
        if remaining[0]:
            return
        if outer.cancelled():
            return
        failed = next((d.exception() for d in deps if d.cancelled() or d.exception()), None)
        if failed is not None or any(d.cancelled() for d in deps):
            outer.set_exception(failed or RuntimeError("a dependency was cancelled"))
            return
        inner = start([d.result() for d in deps])
        inner.add_done_callback(lambda f: _copy(f, outer))

    for dep in deps:
        dep.add_done_callback(on_dep_done)
    return outer


def _copy(source: Future, target: Future) -> None:
    if target.cancelled():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())
