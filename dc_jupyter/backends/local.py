"""Backend that runs jobs in the calling process, through the same pickling.

What fails on a cluster because of pickling fails the same way here, which
makes it the quick way to debug. ``timeout`` cannot stop code running in the
caller's own thread.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from dc_jupyter.backends.base import Backend
from dc_jupyter.core.futures import JobFuture
from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.core.job import Job


class LocalBackend(Backend):
    """Runs ``remote_job.run_job`` right here when the job is started."""

    name = "local"

    def start(self, job: Job, payload: bytes, inputs: list[Any]) -> JobFuture:
        inner: Future = Future()
        inner.set_running_or_notify_cancel()
        try:
            inner.set_result(remote_job.run_job(payload, *inputs))
        except Exception as exc:
            inner.set_exception(exc)
        return JobFuture(inner, name=job.name, key=job.key)
