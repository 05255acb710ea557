"""Many jobs at once: ``dc_jupyter.compute(*jobs)`` and ``dc_jupyter.submit(*jobs)``.

Every job and dependency is pickled before anything is sent, so a bad argument
anywhere fails with nothing running. A dependency shared by several jobs (the
same ``Job`` object) is sent once. Jobs whose backends can share one message
(``Backend.batch_key``; Dask: the same client) go together through
``Backend.start_many``; a job waiting for a dependency on another backend
starts the usual way (``submit.start_after``). ``compute`` waits for all and
returns the results in the order given, like ``dask.compute``.
Not for one job (``Job.submit``) nor for maps (``MapJob``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from dc_jupyter.backends.base import Entry, Pending
from dc_jupyter.core import frozen
from dc_jupyter.core.futures import JobFuture, cancel_many, forget, settle_many
from dc_jupyter.core.job import Job
from dc_jupyter.core.map import MapJob
from dc_jupyter.core.submit import start_after
from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.backends.base import Backend


class _Node:
    __slots__ = ("job", "backend", "payload", "deps")

    def __init__(self, job: Job, backend: Backend, payload: bytes, deps: list[Any]) -> None:
        self.job, self.backend, self.payload, self.deps = job, backend, payload, deps


def _plan(jobs: tuple[Any, ...]) -> list[_Node]:
    """Each job and dependency once, dependencies first; everything pickled, nothing sent."""
    for position, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise TypeError(
                f"dc_jupyter.compute/submit take jobs (calls of @compute_this functions, "
                f"e.g. func(1)), but argument {position} is a {type(job).__name__}: {job!r:.60}. "
                "Nothing was sent. Call the function without .compute(); for a map use "
                "func.map(...).compute()."
            )
    order: list[_Node] = []
    seen: set[int] = set()

    def visit(job: Job) -> None:
        if id(job) in seen:
            return
        seen.add(id(job))
        backend = job.function.backend()
        backend.check(job.function.options, job.name)
        payload, deps = job.prepare(scatter_above=backend.scatter_above())
        backend.ensure_modules(job.modules, f"{job.name}()")  # local code along; none missing
        for dep in deps:
            if isinstance(dep, Job):
                visit(dep)
        order.append(_Node(job, backend, payload, deps))

    for job in jobs:
        visit(job)
    return order


class _Sender:
    """Starts planned nodes, gathering runs of batchable ones into one ``start_many``."""

    def __init__(self) -> None:
        self.handles: dict[int, JobFuture] = {}  # id(job) -> handle
        self.batch: list[Entry] = []
        self.batch_ids: dict[int, int] = {}  # id(job) -> index in batch
        self.batch_key: Any = None

    def flush(self) -> None:
        if not self.batch:
            return
        batch, ids = self.batch, list(self.batch_ids)
        self.batch, self.batch_ids, self.batch_key = [], {}, None
        started = batch[0].backend.start_many(batch)
        self.handles.update(zip(ids, started, strict=True))

    def send(self, node: _Node) -> None:
        key = node.backend.batch_key()
        if key != self.batch_key:
            self.flush()
        inputs: list[Any] = []
        foreign = False
        for dep in node.deps:
            if isinstance(dep, remote_job.Scattered):
                inputs.append(dep)
            elif id(dep) in self.batch_ids:
                inputs.append(Pending(self.batch_ids[id(dep)]))
            else:
                handle = self.handles[id(dep)]
                foreign |= not node.backend.owns(handle)
                inputs.append(handle)
        if foreign:  # waits for a result from elsewhere: not part of a batch
            self.flush()
            inputs = [self.handles[id(d)] if isinstance(d, Job) else d for d in node.deps]
            self.handles[id(node.job)] = start_after(node.backend, node.job, node.payload, inputs)
            return
        self.batch_key = key
        self.batch_ids[id(node.job)] = len(self.batch)
        self.batch.append(Entry(node.backend, node.job, node.payload, inputs))


def submit(*jobs: Job) -> list[JobFuture]:
    """Send many jobs (their dependencies first, each once) and return their handles.

    Jobs on the same Dask client go in one message to the scheduler. If a job
    cannot be pickled, nothing is sent; if sending fails midway, what was
    started is cancelled.
    """
    plan = _plan(jobs)
    sender = _Sender()
    try:
        for node in plan:
            sender.send(node)
        sender.flush()
    except BaseException:
        cancel_many(list(sender.handles.values()))
        raise
    return [sender.handles[id(job)] for job in jobs]


def compute(*jobs: Job, timeout: float | None = None) -> tuple[Any, ...]:
    """Run many jobs together and return their results, in order, like ``dask.compute``.

    The first job to fail raises its error (with a note naming it), and the
    others are cancelled; so are all on ``timeout`` (seconds, ``TimeoutError``)
    or Ctrl-C.
    """
    __tracebackhide__ = True
    from dc_jupyter.config import seconds

    timeout = seconds(timeout, "timeout")  # checked before anything is sent
    as_map = _as_map(jobs)
    if as_map is not None:
        return _compute_map(as_map, timeout)
    handles = submit(*jobs)
    if not handles:
        return ()
    try:
        failed = _wait_all(handles, timeout)
        if failed is not None:
            _raise_failure(handles, failed)
        settle_many(handles)
        values = tuple(h.result() for h in handles)
    except BaseException:
        cancel_many(handles)
        # The traceback keeps this frame (and so the handles) alive: let the
        # cluster forget finished and erred tasks now, not when it is dropped.
        forget(handles)
        raise
    for handle in handles:
        handle.release_remote()
    return values


#: From this many calls of one function on, ``compute`` sends them as a map.
MAP_FROM = 16


def _as_map(jobs: tuple[Any, ...]) -> MapJob | None:
    """Many plain calls of one function (no keywords, no jobs inside) as one map.

    A map sends batches of calls, sized by how long they take, instead of one
    Dask task each (see ``core.batching``): for trivial calls, far fewer
    messages and far less scheduler work.
    """
    if len(jobs) < MAP_FROM or not all(type(job) is Job for job in jobs):
        return None
    first = jobs[0]
    width = len(first.args)
    if not width:
        return None
    for job in jobs:
        if job.function is not first.function or job.kwargs or len(job.args) != width:
            return None
    try:
        return MapJob(first.function, tuple(zip(*(job.args for job in jobs), strict=True)))
    except TypeError:  # a job inside an argument: dependencies need the graph
        return None


def _compute_map(mapped: MapJob, timeout: float | None) -> tuple[Any, ...]:
    __tracebackhide__ = True
    try:
        return tuple(mapped.compute(timeout=timeout))
    except Exception as exc:
        note = (
            f"(dc_jupyter.compute sent these {len(mapped)} calls of {mapped.name} as one map: "
            "item i is job i)"
        )
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        raise


def _wait_all(handles: list[JobFuture], timeout: float | None) -> int | None:
    """Wait until all are done or one failed; the failed one's position, or None."""
    done = threading.Event()
    remaining = [len(set(map(id, handles)))]
    failed: list[int] = []
    lock = threading.Lock()
    positions = {id(h): i for i, h in reversed(list(enumerate(handles)))}

    def one_done(handle: JobFuture) -> None:
        with lock:
            remaining[0] -= 1
            if handle.status in ("error", "cancelled"):
                failed.append(positions[id(handle)])
            if failed or remaining[0] <= 0:
                done.set()

    unique = list({id(h): h for h in handles}.values())
    for handle in unique:
        handle.add_done_callback(one_done)
    if not frozen.wait(done, unique, timeout):  # FrozenWorkerError: the caller cancels all
        raise TimeoutError(
            f"dc_jupyter.compute: {remaining[0]} of {len(handles)} jobs did not finish within "
            f"{timeout:g} s; all were cancelled. Raise the timeout if they need longer."
        )
    with lock:
        return min(failed) if failed else None


def _raise_failure(handles: list[JobFuture], position: int) -> None:
    __tracebackhide__ = True
    handle = handles[position]
    try:
        handle.result()
    except BaseException as exc:
        note = f"(raised by job {position}, {handle.name}, of dc_jupyter.compute)"
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        raise
    raise RuntimeError(f"{handle.name} was cancelled")  # pragma: no cover - result() raised
