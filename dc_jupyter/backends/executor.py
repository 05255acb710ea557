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

    It owns no dependency handle, so the core hands it a job only once its
    dependencies are done: a pool of one worker cannot deadlock waiting on itself.
    """

    name = "executor"

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def start(self, job: Job, payload: bytes, inputs: list[Any]) -> JobFuture:
        inner = self.executor.submit(remote_job.run_job, payload, *inputs)
        return JobFuture(inner, name=job.name, key=job.key)

    def slots(self) -> int:
        return getattr(self.executor, "_max_workers", None) or 1

    def open_map(self, function_blob: bytes, options: Any, name: str = "map") -> BatchChannel:
        return _ExecutorBatches(self.executor, function_blob, options.retries)


class _ExecutorBatches(BatchChannel):
    def __init__(self, executor: Executor, function_blob: bytes, retries: int) -> None:
        super().__init__(function_blob, retries)
        self.executor = executor

    def send(
        self,
        items_blob: bytes,
        key: str,
        budget: float | None = None,
        worker: str | None = None,
    ) -> Future:
        return self.executor.submit(
            remote_job.run_batch,
            self.function_blob,
            items_blob,
            item_retries=self.retries,
            budget=budget,
            single=self.single,
        )
