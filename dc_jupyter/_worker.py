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


def call_payload(payload: bytes, dep_blobs=()):
    """Unpack ``payload``, call the function with dependency results filled in.

    Returns ``(name, result)`` where ``name`` is the function's name for messages.
    """
    func, args, kwargs, slots = cloudpickle.loads(payload)
    if dep_blobs:
        results = [cloudpickle.loads(blob) for blob in dep_blobs]
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
