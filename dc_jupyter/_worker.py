"""What runs on the workers: unpack a call, run it, pack the result.

This module is shipped *by value* with cloudpickle (see ``shippable_task``), so
``dask worker`` processes need only cloudpickle, never dc_jupyter itself. Hence
the rule for this file: import nothing but the standard library and
cloudpickle, and nothing from dc_jupyter.

Results travel back as one cloudpickle blob: pickling happens here, where a
result that cannot be pickled is reported by type while the worker stays
healthy, and Dask moves a single bytes frame instead of walking big containers.
"""

from __future__ import annotations

import cloudpickle

PICKLE_PROTOCOL = 5


class Dep:
    """Placeholder in a payload for the result of the ``index``-th dependency."""

    __slots__ = ("index",)
    dc_jupyter_dep = True

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (Dep, (self.index,))


def _fill(obj, results):
    # Duck-typed on purpose: the Dep class arrives by value and may be a
    # different class object from the one this function's globals hold.
    if getattr(obj, "dc_jupyter_dep", False):
        return results[obj.index]
    if type(obj) in (list, tuple):
        return type(obj)(_fill(item, results) for item in obj)
    if type(obj) is dict:
        return {key: _fill(value, results) for key, value in obj.items()}
    return obj


class Scattered:
    """A large argument sent to the workers with ``scatter``, outside the task graph.

    Dask moves the wrapped value with its own zero-copy serialization; the task
    receives this wrapper in place of a dependency blob and unwraps it.
    """

    __slots__ = ("value",)
    dc_jupyter_scattered = True

    def __init__(self, value) -> None:
        self.value = value

    def __reduce__(self):
        return (Scattered, (self.value,))


def _dep_value(blob):
    if getattr(blob, "dc_jupyter_scattered", False):
        return blob.value
    return cloudpickle.loads(blob)


def call_payload(payload: bytes, dep_blobs=()):
    """Unpack ``payload``, call the function with dependency results filled in.

    Returns ``(name, result)`` where ``name`` is the function's name for messages.
    """
    func, args, kwargs, slots = cloudpickle.loads(payload)
    if dep_blobs:
        results = [_dep_value(blob) for blob in dep_blobs]
        args = list(args)
        for slot in slots:
            if isinstance(slot, int):
                args[slot] = _fill(args[slot], results)
            else:
                kwargs[slot] = _fill(kwargs[slot], results)
    name = getattr(func, "__name__", None) or type(func).__name__
    return name, func(*args, **kwargs)


def dump_result(result, name: str) -> bytes:
    """Pickle a result to send back, or raise a TypeError that names its type."""
    try:
        return cloudpickle.dumps(result, protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        kind = type(result)
        shown = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        raise TypeError(
            f"The result of {name}() is a {shown}, which cannot "
            f"be pickled to send back to the notebook ({type(exc).__name__}: {exc}). Return "
            "plain data instead (numbers, strings, lists, dicts, arrays), or convert it on the "
            "worker before returning."
        ) from None


def run_job(payload: bytes, *dep_blobs: bytes) -> bytes:
    """Run one call on a worker and return its pickled result."""
    name, result = call_payload(payload, dep_blobs)
    return dump_result(result, name)


def shippable_task():
    """Return a task function that Dask must ship by value.

    Dask tries the standard pickle first, which would refer to this module by
    name and fail on workers without dc_jupyter. A function defined inside a
    function has a ``<locals>`` qualified name that pickle cannot look up, so
    Dask falls back to cloudpickle, which ships the code (and, because this
    module is registered by value, its helpers too).
    """

    def dc_jupyter_task(payload: bytes, *dep_blobs: bytes) -> bytes:
        return run_job(payload, *dep_blobs)

    return dc_jupyter_task


# -- maps: many items per task ------------------------------------------------


def _where() -> str:
    """The address of the Dask worker running this, else ``host:pid``."""
    import os
    import socket
    import sys

    if "distributed" in sys.modules:  # never import it here: executors may lack it
        try:
            return sys.modules["distributed"].get_worker().address
        except Exception:
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


def _portable_error(exc: BaseException) -> BaseException:
    """``exc`` made picklable with its traceback (as Dask does it), or a stand-in."""
    try:
        import tblib.pickling_support  # a dependency of distributed, so on every Dask worker

        tblib.pickling_support.install(exc)
    except Exception:
        pass
    try:
        cloudpickle.loads(cloudpickle.dumps(exc, protocol=PICKLE_PROTOCOL))
        return exc
    except Exception:
        return RuntimeError(
            f"{type(exc).__qualname__}: {exc} (the exception itself cannot be pickled)"
        )


def run_batch(function_blob: bytes, items_blob: bytes, *scattered) -> bytes:
    """Run one batch of a map: the function once per item, errors kept per item.

    ``function_blob`` is the function pickled once per map; ``items_blob`` a
    pickled list of argument tuples, where ``Dep(i)`` placeholders stand for
    ``scattered[i]``. Returns ONE blob for the whole batch (Dask would otherwise
    send a list result element by element): ``(values, errors, meta)`` where
    ``errors`` maps a position in the batch to its exception, and ``meta`` says
    where it ran and how long the calls took.
    """
    import time

    started = time.time()
    func = cloudpickle.loads(function_blob)
    name = getattr(func, "__name__", None) or type(func).__name__
    items = cloudpickle.loads(items_blob)
    if scattered:
        values_of = [_dep_value(s) for s in scattered]
        items = [_fill(item, values_of) for item in items]
    values = [None] * len(items)
    errors = {}
    clock = time.perf_counter()
    for position, args in enumerate(items):
        try:
            values[position] = func(*args)
        except Exception as exc:
            errors[position] = _portable_error(exc)
    busy = time.perf_counter() - clock
    meta = {"worker": _where(), "started": started, "busy": busy, "count": len(items)}
    try:
        return cloudpickle.dumps((values, errors, meta), protocol=PICKLE_PROTOCOL)
    except Exception:
        pass
    # Some value cannot be pickled: find it with the single-call machinery,
    # report it for its item only and send the others back.
    for position, value in enumerate(values):
        if position in errors:
            continue
        try:
            dump_result(value, name)
        except TypeError as exc:
            errors[position] = exc
            values[position] = None
    return cloudpickle.dumps((values, errors, meta), protocol=PICKLE_PROTOCOL)


def shippable_batch_task():
    """Like ``shippable_task``, for ``run_batch``."""

    def dc_jupyter_batch(function_blob: bytes, items_blob: bytes, *scattered) -> bytes:
        return run_batch(function_blob, items_blob, *scattered)

    return dc_jupyter_batch


def load_cached(digest: str, blob: bytes):
    """Unpickle a task function once per worker process, then reuse it.

    Referenced only by value and tiny, so a task carries ~1 kB of loader and the
    worker skips re-creating the task's code for every task (~0.1-0.8 ms).
    """
    import pickle
    import sys
    import types

    cache = sys.modules.get("_dc_jupyter_task_cache")
    if cache is None:
        cache = sys.modules["_dc_jupyter_task_cache"] = types.ModuleType("_dc_jupyter_task_cache")
    func = cache.__dict__.get(digest)
    if func is None:
        func = cache.__dict__[digest] = pickle.loads(blob)
    return func
