"""Sending a job: its dependencies first, each to its own backend, then the job.

The one walk over a job's dependencies (``Job.prepare`` finds them). A
dependency runs where its own function says, not where its dependent runs:
in ``echo(where(1))`` with ``where`` on a process pool, ``where`` runs in that
pool. A backend takes the handles it ``owns`` as they are (Dask: the result
moves worker to worker); for any other dependency the job is started only once
it is done, with its result bytes. Not for pickling (``core.job``) nor for
the backends' own work (``backends``).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

from dc_jupyter.core.futures import JobFuture, cancel_many
from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.backends.base import Backend
    from dc_jupyter.core.job import Job


def submit_job(job: Job, backend_override: Any = None) -> JobFuture:
    """Send ``job`` and its dependencies; return its handle at once.

    ``backend_override`` runs this one job elsewhere; its dependencies keep their own.
    """
    backend = job.function.backend(backend_override)
    backend.check(job.function.options, job.name)  # before anything is sent
    payload, deps = job.prepare(scatter_above=backend.scatter_above())
    backend.ensure_modules(job.modules, f"{job.name}()")  # local code along; none missing
    inputs: list[Any] = []
    try:
        for dep in deps:
            inputs.append(dep if isinstance(dep, remote_job.Scattered) else dep.submit())
        return start_after(backend, job, payload, inputs)
    except BaseException:
        # A later dependency (or the job) could not be sent: stop those already running.
        cancel_many([h for h in inputs if isinstance(h, JobFuture)])
        raise


def start_after(backend: Backend, job: Job, payload: bytes, inputs: list[Any]) -> JobFuture:
    """``backend.start`` now if it owns every dependency handle, else once they are done."""
    foreign = [h for h in inputs if isinstance(h, JobFuture) and not backend.owns(h)]
    if not foreign:
        return backend.start(job, payload, inputs)
    deferred = _Deferred()

    def begin() -> None:
        try:
            ready = [h.blob() if h in foreign else h for h in inputs]  # all done: no wait
        except BaseException as exc:  # a dependency failed: this job fails with its error
            deferred.fail(exc)
            return
        if deferred.cancelled():
            return
        try:
            deferred.follow(backend.start(job, payload, ready))
        except BaseException as exc:
            deferred.fail(exc)

    _when_all_done(foreign, begin)
    return JobFuture(deferred, name=job.name, key=job.key, keep=tuple(inputs))


def _when_all_done(handles: list[JobFuture], fn: Any) -> None:
    remaining = [len(handles)]
    lock = threading.Lock()

    def one_done(_handle: JobFuture) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            fn()

    for handle in handles:
        handle.add_done_callback(one_done)


class _Deferred(Future):
    """The inner future of a job waiting for dependencies on other backends.

    Pending until its dependencies are done, then it follows the handle of the
    started job; its result is that job's result blob. Cancelling it cancels
    the started job too.
    """

    def __init__(self) -> None:
        super().__init__()
        self._started: JobFuture | None = None

    def follow(self, handle: JobFuture) -> None:
        self._started = handle
        if self.cancelled():  # cancelled while it was being started
            cancel_many([handle])
            return
        handle.add_done_callback(self._copy)

    def _copy(self, handle: JobFuture) -> None:
        if handle.cancelled():
            self.cancel()
            return
        try:
            blob = handle.blob()
        except BaseException as exc:
            self.fail(exc)
        else:
            try:
                self.set_result(blob)
            except InvalidStateError:  # cancelled meanwhile
                pass

    def fail(self, exc: BaseException) -> None:
        try:
            self.set_exception(exc)
        except InvalidStateError:  # cancelled meanwhile
            pass

    def running(self) -> bool:
        return self._started is not None and not self.done()

    def cancel(self) -> bool:
        # Kept pending (never set running) so that this works until the end.
        started = self._started
        if started is not None:
            cancel_many([started])
        return super().cancel()
