"""Decorated functions as they arrive on a worker: plain calls inside a job.

A ``@compute_this`` function that travels inside a job (the job's own function
calls it, a class holds it as a method, a ``functools.partial`` wraps it)
pickles as ``restore(token, func, spec)``. In the notebook's process that gives
back the very decorated function; on a worker, which has no dc_jupyter, it
gives an ``InlineFunction``: calling it runs the plain function (so recursion
and helpers work), and ``f(x).compute()`` or ``f.map(xs).compute()`` written
in one expression sends the work to the same cluster from the worker, seceded
from the worker's thread pool so a one-thread worker cannot deadlock.

Shipped by value like ``remote.job``: the standard library, cloudpickle and
functions of ``remote.job`` only; ``distributed`` only inside functions.
"""

from __future__ import annotations

import dis
import functools
import sys
import types
import uuid

import cloudpickle

from dc_jupyter.remote.job import (
    dumps_keeping_filenames,
    output_route,
    run_coroutine,
    run_job,
    settle,
    user_exception,
)

#: Methods of a job whose call right after ``f(x)`` means "send it", not "the value".
_SENDS = frozenset({"compute", "run", "submit"})
#: The notebook-side module whose registry maps tokens to decorated functions.
_FUNCTION_MODULE = "dc_jupyter.core.function"


def restore(token: str, func, spec: dict):
    """The decorated function ``token`` names if this process has it, else an inline one."""
    module = sys.modules.get(_FUNCTION_MODULE)  # never imported here: workers lack it
    original = getattr(module, "registry", {}).get(token) if module is not None else None
    return original if original is not None else InlineFunction(token, func, spec)


def sends_result(frame) -> bool:
    """Whether the call running in ``frame`` is followed at once by ``.compute()``,
    ``.run()`` or ``.submit()``: ``f(x).compute()`` asks for a job, ``f(x)`` for a value.

    Read from the caller's bytecode (the instruction after the call), since the
    call itself cannot tell how its result will be used.
    """
    return _next_attribute(frame.f_code, frame.f_lasti) in _SENDS


def _next_attribute(code, offset: int):
    """The attribute name the instruction after ``offset`` in ``code`` loads, if any."""
    # Cached per code object in this process (recursion asks for the same call
    # again and again). Not functools.lru_cache: it would be pickled by name and
    # workers cannot import this module.
    cache = sys.__dict__.setdefault("_dc_jupyter_next_attribute", {})
    key = (code, offset)
    if key not in cache:
        if len(cache) > 4096:
            cache.clear()
        cache[key] = _scan(code, offset)
    return cache[key]


def _scan(code, offset: int):
    found = False
    for instruction in dis.get_instructions(code):
        if found:
            if instruction.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                return instruction.argval
            return None
        found = instruction.offset == offset
    return None


def plain_call(func, args: tuple, kwargs: dict):
    """``func(*args, **kwargs)`` as a job's code calls it: an ``async def`` is awaited,
    unless the caller itself runs in an event loop and will ``await`` it."""
    value = func(*args, **kwargs)
    if not isinstance(value, types.CoroutineType) or _in_event_loop():
        return value
    return run_coroutine(value)


def _in_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class InlineFunction:
    """A ``@compute_this`` function on a worker: a plain call, or a job when sent."""

    def __init__(self, token: str, func, spec: dict) -> None:
        functools.update_wrapper(self, func)
        self._token = token
        self._spec = spec

    def __call__(self, *args, **kwargs):
        if sends_result(sys._getframe(1)):
            return WorkerJob(self, [(args, kwargs)], single=True)
        return plain_call(self.__wrapped__, args, kwargs)

    def local(self, *args, **kwargs):
        """The plain function, here and now."""
        return plain_call(self.__wrapped__, args, kwargs)

    def map(self, *iterables) -> WorkerJob:
        """One call per item, like the builtin ``map``; ``.compute()`` sends them."""
        return WorkerJob(self, [(args, {}) for args in zip(*iterables, strict=False)], single=False)

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    def __reduce__(self):
        # Back in the notebook this is the decorated function again.
        return (restore, (self._token, self.__wrapped__, self._spec))

    def __repr__(self) -> str:
        return f"<compute_this {self.__qualname__} (inline on a worker)>"


class WorkerJob:
    """Calls of an ``InlineFunction`` to send from a worker to its own cluster."""

    def __init__(self, function: InlineFunction, calls: list, single: bool) -> None:
        self.function = function
        self.calls = calls
        self.single = single

    def compute(self, timeout=None):
        """Run the calls as tasks of this worker's cluster (here, if not on a worker)."""
        results = send_from_worker(self.function, self.calls, timeout)
        return results[0] if self.single else results

    run = compute

    def submit(self):
        """Run now; a finished handle whose ``result()`` is the value."""
        return _Done(self.compute())


class _Done:
    def __init__(self, value) -> None:
        self.value = value

    def result(self, timeout=None):
        return self.value

    def done(self) -> bool:
        return True


def send_from_worker(function: InlineFunction, calls: list, timeout=None) -> list:
    """Results of ``calls`` (``(args, kwargs)`` pairs) run as tasks on this cluster.

    ``worker_client`` secedes this task from the worker's thread pool while it
    waits, so the calls can run on this very worker.
    """
    func = function.__wrapped__
    try:
        from distributed import get_worker, wait, worker_client

        get_worker()
    except (ImportError, ValueError):  # not on a Dask worker: a plain call here
        return [settle(func(*args, **kwargs)) for args, kwargs in calls]
    spec = function._spec
    name = spec.get("name") or "call"
    payloads = [dumps_keeping_filenames((func, args, kwargs, ())) for args, kwargs in calls]
    keys = [f"{name}-{uuid.uuid4().hex}" for _ in calls]
    timeout = timeout if timeout is not None else spec.get("timeout")
    # Their output shows in the cell of this job, marked as this job's.
    route = output_route()
    routed = {"route": route} if route is not None else {}
    with worker_client() as client:
        futures = client.map(
            run_job,
            payloads,
            key=keys,
            pure=False,
            retries=spec.get("retries") or 0,
            resources=spec.get("resources") or None,
            **routed,
        )
        try:
            try:
                wait(futures, timeout=timeout)
            except TimeoutError:  # distributed's is the builtin one
                raise TimeoutError(
                    f"{name} did not finish within {timeout:g} s inside the job; its tasks "
                    "were cancelled. Raise the timeout if it needs longer."
                ) from None
            try:
                blobs = client.gather(futures)
            except Exception as exc:
                raise user_exception(exc) from None
        except BaseException:
            # Failed, timed out, or this job was cancelled: nothing it sent keeps running.
            client.cancel(futures)
            raise
    return [cloudpickle.loads(blob) for blob in blobs]
