"""What runs on the workers: unpack a call, run it, pack the result.

``dask worker`` processes need only cloudpickle, never dc_jupyter itself: this
file is uploaded to Dask clusters as a module of its own (``backends.dask.install``),
and pickled by value where a payload holds its classes (``core.pickling``). Hence
the rule for this file: import nothing but the standard library and
cloudpickle (``distributed`` only inside functions), and nothing from dc_jupyter.

Results travel back as one cloudpickle blob: pickling happens here, where a
result that cannot be pickled is reported by type while the worker stays
healthy, and Dask moves a single bytes frame instead of walking big containers.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import threading
import time
import types

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


def type_name(value) -> str:
    """``module.Qualname`` of a value's type, as users see it in messages."""
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


# -- pickling that keeps source file names -------------------------------------------


def _code_reduce_keeping_filename(code: types.CodeType) -> tuple:
    # The ONE use of cloudpickle's private ``_code_reduce`` (tests/test_units.py
    # fails loudly if cloudpickle changes it). cloudpickle 3.x writes
    # "<dynamic-code>" as every shipped function's file name, so tracebacks
    # would lose the notebook's source lines: keep the real one.
    constructor, args = cloudpickle.cloudpickle._code_reduce(code)
    return constructor, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


def pickler_class() -> type:
    """A ``cloudpickle.Pickler`` that keeps source file names.

    Made by a call with ``type()``, not as a module-level class: this module
    travels by value, and such a class would be shipped with cloudpickle's
    whole dispatch table.
    """
    from collections import ChainMap

    table = ChainMap(
        {types.CodeType: _code_reduce_keeping_filename}, cloudpickle.Pickler.dispatch_table
    )
    return type("FileNamePickler", (cloudpickle.Pickler,), {"dispatch_table": table})


def dumps_keeping_filenames(value, pickler=None) -> bytes:
    """cloudpickle ``value`` with ``pickler_class()`` (or the ``pickler`` class given)."""
    buffer = io.BytesIO()
    (pickler or pickler_class())(buffer, protocol=PICKLE_PROTOCOL).dump(value)
    return buffer.getvalue()


def dump_result(result, name: str) -> bytes:
    """Pickle a result to send back, or raise a TypeError that names its type."""
    try:
        return cloudpickle.dumps(result, protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        shown = type_name(result)
        raise TypeError(
            f"The result of {name}() is a {shown}, which cannot "
            f"be pickled to send back to the notebook ({type(exc).__name__}: {exc}). Return "
            "plain data instead (numbers, strings, lists, dicts, arrays), or convert it on the "
            "worker before returning."
        ) from None


def run_job(payload: bytes, *dep_blobs: bytes) -> bytes:
    """Run one call on a worker and return its pickled result."""
    with running_task():
        name, result = call_payload(payload, dep_blobs)
        return dump_result(result, name)


# -- stopping running code (cancel, timeout, Ctrl-C in the notebook) ---------------
#
# Dask can cancel a queued task but not one that already runs: its thread keeps
# going and a one-thread worker stays busy. So each task registers its thread
# under its Dask key while it runs, and the client asks the workers (with
# ``client.run(interrupt_tasks, keys)``) to raise ``TaskInterrupted`` in those
# threads with ``PyThreadState_SetAsyncExc``. The exception lands at the next
# Python bytecode the thread runs: C code that never returns (a long
# ``time.sleep``, a blocking socket read) finishes first.

#: Where the registry lives on the ``distributed.Worker`` object, so that every
#: copy of this module in the worker (by version, or unpickled by value) shares it.
_STATE_ATTR = "_dc_jupyter_interrupts"
#: How long a key cancelled before its task started stays remembered.
_FORGET_CANCELLED_AFTER = 300.0


class TaskInterrupted(BaseException):
    """Raised in a task's thread to stop it; a BaseException so ``except Exception``
    in user code does not swallow it. ``running_task`` turns it into an ordinary
    error before it reaches Dask (which would shut the worker down on a bare
    BaseException that is not its own)."""

    dc_jupyter_interrupt = True


class _InterruptState:
    """Per worker process: which thread runs which key, and keys already cancelled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}  # key -> thread ident
        self.interrupted: set[str] = set()
        self.cancelled: dict[str, float] = {}  # key -> time.monotonic() when cancelled


def _state(worker=None):
    """This worker's ``_InterruptState``, or None outside a Dask worker (local backends)."""
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            return None
    state = getattr(worker, _STATE_ATTR, None)
    if state is None:
        # setdefault on the instance dict is atomic under the GIL: two threads
        # creating it at once still share one.
        state = worker.__dict__.setdefault(_STATE_ATTR, _InterruptState())
    return state


def _current_key():
    try:
        from distributed.worker import thread_state
    except ImportError:
        return None
    return getattr(thread_state, "key", None)


def _set_async_exc(thread_id: int, exc_type) -> int:
    # exc_type None clears a pending exception (the C API's NULL).
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


@contextlib.contextmanager
def running_task(key=None):
    """Let ``interrupt_tasks`` stop the code run inside this block on this worker.

    ``key`` defaults to the Dask key of the task this thread runs. Outside a
    Dask worker (local and executor backends) this does nothing.
    """
    state = _state()
    key = key if key is not None else _current_key()
    if state is None or key is None:
        yield
        return
    thread_id = threading.get_ident()
    with state.lock:
        if key in state.cancelled:  # cancelled before it got here: don't start
            raise RuntimeError(f"task {key!r} was cancelled before it started")
        state.running[key] = thread_id
    try:
        yield
    except BaseException as exc:
        if getattr(type(exc), "dc_jupyter_interrupt", False):
            raise RuntimeError(f"task {key!r} was cancelled and stopped on its worker") from None
        raise
    finally:
        with state.lock:
            state.running.pop(key, None)
            if key in state.interrupted:
                state.interrupted.discard(key)
                # The exception may still be pending if the code never reached
                # another bytecode; it must not fire later in Dask's own code or
                # in the next task on this thread.
                _set_async_exc(thread_id, None)


def interrupt_tasks(keys, dask_worker=None) -> list:
    """Stop the tasks ``keys`` on this worker (run with ``client.run``).

    Returns the keys that were running here. Keys not running yet are
    remembered, so a task that starts after its cancellation stops at once.
    """
    state = _state(dask_worker)
    if state is None:
        return []
    hit = []
    now = time.monotonic()
    with state.lock:
        for key in keys:
            thread_id = state.running.get(key)
            if thread_id is None:
                state.cancelled[key] = now
            elif key not in state.interrupted and _set_async_exc(thread_id, TaskInterrupted):
                state.interrupted.add(key)
                hit.append(key)
        for key, when in list(state.cancelled.items()):
            if now - when > _FORGET_CANCELLED_AFTER:
                del state.cancelled[key]
    return hit


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


def run_batch(function_blob: bytes, items_blob: bytes, *scattered, item_retries: int = 0) -> bytes:
    """Run one batch of a map: the function once per item, errors kept per item.

    An item that raises is run again, right here, up to ``item_retries`` times
    (``retries=`` of the map) before its error counts.

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
    with running_task():  # cancel / Ctrl-C / timeout stop the batch mid-item
        for position, args in enumerate(items):
            for attempt in range(item_retries + 1):
                try:
                    values[position] = func(*args)
                    break
                except Exception as exc:
                    if attempt == item_retries:
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
