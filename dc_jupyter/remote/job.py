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
import contextvars
import ctypes
import functools
import io
import sys
import threading
import time
import types

import cloudpickle

PICKLE_PROTOCOL = 5
#: Where ``remote/output.py`` lives in this process: ``backends.dask.install``
#: installs it under a hashed name and rewrites this line to match.
OUTPUT_MODULE = "dc_jupyter.remote.output"


def _output():
    """The worker-side output module (see ``OUTPUT_MODULE``).

    This file may also run by value (work sent from inside a job), where the
    name is not importable: then any installed copy, else no forwarding.
    """
    import importlib
    import sys

    try:
        return importlib.import_module(OUTPUT_MODULE)
    except ImportError:
        for name, module in list(sys.modules.items()):
            if name.startswith("dc_jupyter_output_") and module is not None:
                return module
        return _NoOutput


class _NoForwarding:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def set_part(self, part: int, retry: int = 0) -> None:
        pass


class _NoOutput:
    BATCH_LIMIT = 0
    forwarding = _NoForwarding

    @staticmethod
    def current_route():
        return None


def output_route():
    """Where the output of work sent from this job goes (``remote.output.current_route``)."""
    route = getattr(_output(), "current_route", None)
    return route() if route is not None else None


class Dep:
    """Placeholder in a payload for the result of the ``index``-th dependency."""

    __slots__ = ("index",)
    dc_jupyter_dep = True

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (Dep, (self.index,))


def _marked(obj, marker: str) -> bool:
    """Whether ``obj``'s exact type is one of this module's placeholder classes.

    Looked up in the type's own ``__dict__``, never on the instance: an argument
    whose ``__getattr__`` answers every name (a proxy, a mock) is not a
    placeholder. Not ``type(obj) is Dep``: the class arrives by value and may be
    a different class object from the one this module's globals hold.
    """
    return vars(type(obj)).get(marker) is True


def _fill(obj, results, active=None):
    """``obj`` with ``Dep`` placeholders (in lists, tuples, namedtuples, sets and
    dict values) replaced by ``results``; cycle-safe."""
    if _marked(obj, "dc_jupyter_dep"):
        return results[obj.index]
    kind = type(obj)
    if kind not in (list, tuple, dict, set, frozenset) and not _is_namedtuple(obj):
        return obj
    active = set() if active is None else active
    if id(obj) in active:  # a container that holds itself: leave the loop as it is
        return obj
    active.add(id(obj))
    try:
        if kind is dict:
            return {key: _fill(value, results, active) for key, value in obj.items()}
        items = [_fill(item, results, active) for item in obj]
        return kind._make(items) if kind not in (list, tuple, set, frozenset) else kind(items)
    finally:
        active.discard(id(obj))


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields") and hasattr(type(obj), "_make")


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
    if _marked(blob, "dc_jupyter_scattered"):
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
    return name, settle(func(*args, **kwargs))


# -- inside a running job ------------------------------------------------------------


def job_flag() -> contextvars.ContextVar:
    """True while this thread (or a task it awaits) runs a job's code.

    One variable per process, kept on ``sys``: this module exists in several
    copies (installed by name, unpickled by value) and ``core.function`` reads
    it too, so no module's globals can hold it.
    """
    flag = sys.__dict__.get("_dc_jupyter_in_job")
    if flag is None:
        flag = sys.__dict__.setdefault(
            "_dc_jupyter_in_job", contextvars.ContextVar("dc_jupyter_in_job", default=False)
        )
    return flag


@contextlib.contextmanager
def inside_job():
    """Mark the code run in this block as a job's: decorated functions it calls run inline."""
    flag = job_flag()
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def settle(value):
    """``value``, or what it returns when awaited if it is a coroutine (``async def``)."""
    import inspect

    if not inspect.iscoroutine(value):
        return value
    return run_coroutine(value)


def run_coroutine(coro, loop=None):
    """Run ``coro`` to its end on ``loop`` (default: a new one), from synchronous code.

    In a thread that already runs an event loop (the notebook's kernel, when the
    local backend runs a job in it), the coroutine runs in a thread of its own:
    a loop cannot be entered twice.
    """
    import asyncio

    def run():
        own = loop or asyncio.new_event_loop()
        try:
            return own.run_until_complete(coro)
        finally:
            if loop is None:
                own.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    outcome = {}

    def in_thread():
        try:
            outcome["value"] = run()
        except BaseException as exc:  # raised again in the caller's thread
            outcome["error"] = exc

    # The coroutine still counts as the job's code in its own thread.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(in_thread,), name="dc_jupyter-await")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


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


def _by_value(obj) -> bool:
    """Whether cloudpickle sends ``obj`` (a function) by value: defined in the
    notebook (``__main__``), in a module registered by value, or not found by name."""
    module_name = getattr(obj, "__module__", None)
    module = sys.modules.get(module_name) if isinstance(module_name, str) else None
    if module is None or module_name == "__main__":
        return True
    registered = cloudpickle.list_registry_pickle_by_value()
    if any(module_name == r or module_name.startswith(r + ".") for r in registered):
        return True
    found = module
    for part in getattr(obj, "__qualname__", "").split("."):
        found = getattr(found, part, None)
    return found is not obj


# Wrappers of notebook functions that pickle by name, or hold what cannot be
# pickled: rebuilt around their functions (which travel by value) on the other
# side. Both ways: notebook to worker, and back (a cell defines one).


def _reduce_lru_cache(wrapper):
    # functools.lru_cache / cache pickle by name ("slow_square"), which the other
    # side cannot look up (a worker's __main__ is not the notebook's).
    wrapped = getattr(wrapper, "__wrapped__", None)
    if wrapped is None or not _by_value(wrapper):
        return wrapper.__reduce__()
    params = wrapper.cache_parameters()
    return _lru_cached, (wrapped, params["maxsize"], params["typed"])


def _lru_cached(function, maxsize, typed):
    """``functools.lru_cache`` rebuilt around a function that arrived by value (empty cache)."""
    import functools

    return functools.lru_cache(maxsize=maxsize, typed=typed)(function)


def _reduce_cached_property(prop):
    # Before Python 3.12 it holds an RLock, so a notebook class using it could not
    # be sent at all; the function and the attribute name are all it needs.
    return _cached_property, (prop.func, prop.attrname)


def _cached_property(function, attrname):
    """``functools.cached_property`` rebuilt in a class that arrived by value."""
    import functools

    prop = functools.cached_property(function)
    prop.attrname = attrname  # __set_name__ does not run for a class rebuilt by pickle
    return prop


def _reduce_dispatcher(func):
    """A ``functools.singledispatch`` function of the notebook, or None.

    Its closure holds a ``WeakKeyDictionary`` (its dispatch cache), which cannot
    be pickled: it travels as its registry and is rebuilt. In two steps (an empty
    dispatcher, then its implementations), so implementations that call it
    again (recursion over containers) find it in the pickle's memo.
    """
    registry = getattr(func, "registry", None)
    if registry is None or not hasattr(func, "dispatch") or not _by_value(func):
        return None
    return _dispatcher, (func.__name__,), list(registry.items()), None, None, _fill_dispatcher


def _dispatcher(name: str):
    import functools

    def default(*args, **kwargs):  # replaced by the registered object implementation
        raise NotImplementedError(name)

    default.__name__ = name
    return functools.singledispatch(default)


def _fill_dispatcher(dispatcher, implementations) -> None:
    import functools

    for cls, implementation in implementations:
        dispatcher.register(cls, implementation)
        if cls is object:  # the decorated function: name, docstring, __wrapped__
            functools.update_wrapper(dispatcher, implementation)


def _reducer_override(self, obj):
    # Functions never reach the dispatch table (cloudpickle reduces them here):
    # a singledispatch function is recognised by its attributes.
    if type(obj) is types.FunctionType:
        reduced = _reduce_dispatcher(obj)
        if reduced is not None:
            return reduced
    return cloudpickle.Pickler.reducer_override(self, obj)


def pickler_class() -> type:
    """A ``cloudpickle.Pickler`` that keeps source file names, and sends wrappers
    of notebook functions (``lru_cache``, ``cache``, ``cached_property``,
    ``singledispatch``) by value.

    Made by a call with ``type()``, not as a module-level class: this module
    travels by value, and such a class would be shipped with cloudpickle's
    whole dispatch table.
    """
    import functools
    from collections import ChainMap

    ours = {
        types.CodeType: _code_reduce_keeping_filename,
        functools._lru_cache_wrapper: _reduce_lru_cache,
        functools.cached_property: _reduce_cached_property,
    }
    table = ChainMap(ours, cloudpickle.Pickler.dispatch_table)
    return type(
        "FileNamePickler",
        (cloudpickle.Pickler,),
        {"dispatch_table": table, "reducer_override": _reducer_override},
    )


def dumps_keeping_filenames(value, pickler=None) -> bytes:
    """cloudpickle ``value`` with ``pickler_class()`` (or the ``pickler`` class given)."""
    buffer = io.BytesIO()
    (pickler or pickler_class())(buffer, protocol=PICKLE_PROTOCOL).dump(value)
    return buffer.getvalue()


def dump_result(result, name: str) -> bytes:
    """Pickle a result to send back, or raise a TypeError that names its type."""
    try:
        return _dump_back(result)
    except Exception as exc:
        shown = type_name(result)
        raise TypeError(
            f"The result of {name}() is a {shown}, which cannot "
            f"be pickled to send back to the notebook ({type(exc).__name__}: {exc}). Return "
            "plain data instead (numbers, strings, lists, dicts, arrays), or convert it on the "
            "worker before returning."
        ) from None


def _dump_back(value) -> bytes:
    """cloudpickle ``value`` for the notebook; if that fails, with ``pickler_class``,
    which also sends wrappers of functions defined in the work (``lru_cache``,
    ``singledispatch``) by value. Only then: the fast path stays plain."""
    try:
        return cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception:
        try:
            return dumps_keeping_filenames(value)
        except Exception:
            pass
        raise


def run_job(payload: bytes, *dep_blobs: bytes, route: tuple = (), push: tuple = ()) -> bytes:
    """Run one call on a worker and return its pickled result.

    Whatever the user's code raises is made safe to send first (``sendable``):
    Dask would shut the worker down on ``SystemExit``, and hang on a traceback
    thousands of frames deep. ``route``: ``(ident, part, attempt)`` of the job
    that sent this call from its worker, whose cell shows its output.
    ``push``: ``(topic, max_bytes)``: a result up to that size is also sent
    to the notebook at once as an event on ``topic`` (``push_result``).
    """
    error = None
    ident, part, attempt = route or (None, 0, "")
    # prints etc. reach the notebook, live
    with running_task(), inside_job(), _output().forwarding(ident, part, attempt=attempt):
        try:
            name, result = call_payload(payload, dep_blobs)
        except BaseException as exc:
            if _is_interrupt(exc):
                raise
            note_first_lines(exc)
            error = sendable(exc)
        else:
            blob = dump_result(result, name)
    if error is None:
        if push:  # after the output's last event, which must arrive first
            push_result(blob, *push)
        return blob
    # Raised outside the except block, so the wrapper does not chain the original.
    raise error


def push_result(blob: bytes, topic: str, max_bytes: int) -> None:
    """Send a small result to the notebook ahead of Dask's own way back.

    Dask tells the client that a task finished, and the client then asks for
    the result: two more round trips (through the scheduler, or to the
    worker). An event logged here travels worker -> scheduler -> client on the
    same ordered streams as the "finished" message, ahead of it, so the
    notebook has the value as soon as it hears of the end. The result stays
    on the worker as well (later work may depend on it) until released.
    """
    if len(blob) > max_bytes:
        return
    key = _current_key()
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    if key is not None:
        worker.log_event(topic, {"key": key, "result": blob})


# -- errors the user's code raises ---------------------------------------------------
#
# Three things make an exception unsafe to hand to Dask as it is:
# - a BaseException that is not an Exception (SystemExit from sys.exit() or an
#   argparse error, KeyboardInterrupt, GeneratorExit) shuts the worker down;
# - a traceback thousands of frames deep (RecursionError, deep code) pickles on
#   the worker but not in the client, whose handler then fails and the future
#   never finishes;
# - an exception that cannot be pickled.

#: Tracebacks longer than this keep their first and last frames only.
MAX_FRAMES = 60
_HEAD_FRAMES = 15
#: How many chained exceptions (``__cause__`` / ``__context__``) travel along.
MAX_CHAIN = 5
#: The attribute of the stand-in that carries a BaseException across (duck-typed:
#: the notebook side finds it with ``user_exception``).
_CARRIED = "dc_jupyter_raised"


def _is_interrupt(exc: BaseException) -> bool:
    return getattr(type(exc), "dc_jupyter_interrupt", False)


def _truncate_traceback(exc: BaseException) -> None:
    """Keep the first and last frames of a very deep traceback, and say so in a note."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    if len(frames) <= MAX_FRAMES:
        return
    tail = MAX_FRAMES - _HEAD_FRAMES
    frames[_HEAD_FRAMES - 1].tb_next = frames[-tail]
    omitted = len(frames) - MAX_FRAMES
    exc.add_note(
        f"(dc_jupyter: traceback truncated: {omitted} of {len(frames)} frames in the middle "
        "are not shown)"
    )


def _trim_chain(exc: BaseException) -> None:
    """Truncate the tracebacks of ``exc`` and its chained exceptions; cut long chains."""
    seen: set[int] = set()
    todo = [(exc, 0)]
    while todo:
        current, depth = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        _truncate_traceback(current)
        for attr in ("__cause__", "__context__"):
            linked = getattr(current, attr)
            if linked is None:
                continue
            if depth + 1 >= MAX_CHAIN or id(linked) in seen:
                setattr(current, attr, None)
            else:
                todo.append((linked, depth + 1))


def sendable(exc: BaseException) -> Exception:
    """``exc`` made safe to hand to Dask (or another process) as a task's failure.

    Deep tracebacks are truncated; an exception that cannot be pickled becomes
    a ``RuntimeError`` naming it; a ``BaseException`` that is not an
    ``Exception`` travels inside a ``RuntimeError`` that ``user_exception``
    unwraps in the notebook. The traceback is kept.
    """
    try:
        _trim_chain(exc)
    except Exception:  # never let the repair hide the user's error
        pass
    traceback = exc.__traceback__
    portable = _portable_error(exc)
    if isinstance(portable, Exception):
        return portable
    carrier = RuntimeError(f"{type(portable).__qualname__}: {portable}")
    setattr(carrier, _CARRIED, portable)
    portable.__traceback__ = None  # travels as the carrier's traceback
    return carrier.with_traceback(traceback)


def user_exception(exc: BaseException) -> BaseException:
    """The exception the user's code raised, out of the carrier ``sendable`` made."""
    carried = getattr(exc, _CARRIED, None)
    if isinstance(carried, BaseException):
        exc = carried.with_traceback(exc.__traceback__)
    if isinstance(exc, SystemExit) and exc.code is None and exc.args:
        # tblib's unpickling skips __init__, which sets the exit code from args
        exc.code = exc.args[0] if len(exc.args) == 1 else exc.args
    return exc


#: Set on a failing task's exception (and those it chains to): for each frame of
#: its traceback, ``(file, function, line) -> the function's first line``. A
#: traceback travels as file, function and line only; the notebook side needs
#: the first line to rebuild frames whose source IPython shows around the line
#: that raised (``core.tracebacks``).
FIRST_LINES_ATTR = "_dc_jupyter_first_lines"


def note_first_lines(exc) -> None:
    todo, seen = [exc], set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        lines = {}
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            lines[(code.co_filename, code.co_name, tb.tb_lineno)] = code.co_firstlineno
            tb = tb.tb_next
        try:
            setattr(exc, FIRST_LINES_ATTR, lines)
        except Exception:
            pass
        todo += [exc.__cause__, exc.__context__]


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


def _tasks_waiting() -> bool:
    """Whether this worker has tasks ready to start as soon as a thread is free.

    Pushing a result (``push_result``) costs the worker ~2 ms before it starts
    its next task (1.9 -> 4.1 ms between a map's batches on one worker); with
    a task waiting, the map is not waiting for this result either: it has more
    work out. The batches that end a worker's queue are the ones the map's end
    waits for, whichever of them it is, and they cost nothing this way.
    """
    try:
        from distributed import get_worker

        state = get_worker().state
        return bool(state.ready) or bool(state.constrained)
    except Exception:  # not on a Dask worker (local backends)
        return False


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
    note_first_lines(exc)
    try:
        import tblib.pickling_support  # a dependency of distributed, so on every Dask worker

        tblib.pickling_support.install(exc)
    except Exception:
        pass
    try:
        cloudpickle.loads(cloudpickle.dumps(exc, protocol=PICKLE_PROTOCOL))
        return exc
    except Exception:
        try:
            text = str(exc)
        except Exception:
            text = "<str() failed>"
        return RuntimeError(
            f"{type(exc).__qualname__}: {text} (the exception itself cannot be pickled)"
        ).with_traceback(exc.__traceback__)


def run_batch(
    function_blob: bytes,
    items_blob: bytes,
    *scattered,
    item_retries: int = 0,
    budget: float | None = None,
    single: bool = False,
    push: tuple = (),
) -> bytes:
    """Run one batch of a map: the function once per item, errors kept per item.

    An item that raises is run again, right here, up to ``item_retries`` times
    (``retries=`` of the map) before its error counts. With ``budget``
    (seconds), the batch stops after the item that used it up and sends back
    the results so far; ``meta["count"]`` says how many items ran, and the
    notebook sends the rest again. So a first batch can be large without
    knowing how long an item takes: a trivial function gets through all of
    it, a slow one runs a few items and hands the others back.

    ``function_blob`` is the function pickled once per map; ``items_blob`` a
    pickled list of argument tuples (with ``single``: of single arguments), where ``Dep(i)`` placeholders stand for
    ``scattered[i]``. Returns ONE blob for the whole batch (Dask would otherwise
    send a list result element by element): ``(values, errors, meta)`` where
    ``errors`` maps a position in the batch to its exception, and ``meta`` says
    where it ran and how long the calls took. ``push``: as for ``run_job``.
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
    output = _output()
    # cancel / Ctrl-C / timeout stop the batch mid-item; output is marked with its item
    with (
        running_task(),
        inside_job(),
        output.forwarding(limit=output.BATCH_LIMIT) as forwarding,
    ):
        run = functools.partial(
            _run_items, func, items, values, errors, forwarding, item_retries, single
        )
        ran = _run_within(run, len(items), budget)
    busy = time.perf_counter() - clock
    del values[ran:]
    meta = {"worker": _where(), "started": started, "busy": busy, "count": ran}
    try:
        blob = _dump_back((values, errors, meta))
    except Exception:
        pass
    else:
        # After the output's last event, as in run_job; and only when no task
        # waits for this thread (see _tasks_waiting).
        if push and not _tasks_waiting():
            push_result(blob, *push)
        return blob
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


def _run_within(run, count: int, budget) -> int:
    """``run(start, stop)`` (``_run_items``) over the batch's ``count`` items, within ``budget`` seconds (None: no limit):
    no item is started that would, at the mean rate so far, end past it.
    Returns how many items ran (at least one).

    The clock is read between runs of items, not per item: each run takes
    about half the time left at the rate measured so far, so a trivial
    function pays for a handful of clock reads per batch.
    """
    if budget is None:
        run(0, count)
        return count
    clock = time.perf_counter()
    deadline = clock + budget
    done, step = 0, 1
    while done < count:
        stop = min(count, done + step)
        run(done, stop)
        done = stop
        now = time.perf_counter()
        fit = (deadline - now) / max((now - clock) / done, 1e-9)  # items that fit in what is left
        if fit < 1:
            break
        step = max(1, int(fit / 2))
    return done


def _run_items(
    func, items, values, errors, forwarding, item_retries: int, single: bool, start, stop
) -> None:
    """Call ``func(*args)`` (``single``: ``func(item)``) for items ``start:stop`` into
    ``values``; failures go to ``errors``.

    The loop is the whole cost of a map of a trivial function (it was ~3 us an
    item with a retry loop, a lock and an import per item; ~0.3 us now): per
    item it only marks which item prints (one attribute, read when a line is
    written) and checks for a coroutine. A failing item leaves the fast loop
    for ``_run_one`` (retries, error kept) and the loop goes on after it.
    """
    # The object whose ``part`` the output of this thread is marked with.
    marker = forwarding.forwarder if forwarding.forwarder is not None else forwarding
    coroutine = types.CoroutineType
    position, count = start, stop
    while position < count:
        try:
            for position in range(position, count):  # noqa: B020 - resumed after a failure
                marker.part = position
                value = func(items[position]) if single else func(*items[position])
                if type(value) is coroutine:
                    value = run_coroutine(value)
                values[position] = value
            forwarding.part = position
            return
        except BaseException as exc:  # SystemExit & co. fail their item only
            if _is_interrupt(exc):
                raise
            args = (items[position],) if single else items[position]
            _run_one(func, args, position, values, errors, exc, item_retries, forwarding)
            position += 1
    forwarding.part = max(0, position - 1)


def _run_one(func, args, position, values, errors, first, item_retries: int, forwarding) -> None:
    """An item whose first call raised ``first``: retried up to ``item_retries`` times."""
    exc = first
    try:
        for attempt in range(1, item_retries + 1):
            # SystemExit & co. are the user's answer, not a failure: never retried.
            if not isinstance(exc, Exception):
                break
            forwarding.set_part(position, attempt)  # a retry's lines are marked
            try:
                values[position] = settle(func(*args))
                return
            except BaseException as again:
                if _is_interrupt(again):
                    raise
                exc = again
        _trim_chain(exc)
        errors[position] = _portable_error(exc)
    finally:
        if item_retries:
            forwarding.set_part(position, 0)  # the next items run their first attempt


def split_batch(blob: bytes) -> bytes:
    """Re-pickle a ``run_batch`` result item by item (run on a worker).

    For a batch whose result the notebook cannot unpickle as a whole: each
    value and error gets a blob of its own, so only the items that cannot be
    unpickled there fail. Returns ``(item_blobs, error_blobs, meta)``.
    """
    values, errors, meta = cloudpickle.loads(blob)
    item_blobs = [
        None if position in errors else cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        for position, value in enumerate(values)
    ]
    error_blobs = {
        position: cloudpickle.dumps(exc, protocol=PICKLE_PROTOCOL)
        for position, exc in errors.items()
    }
    return cloudpickle.dumps((item_blobs, error_blobs, meta), protocol=PICKLE_PROTOCOL)


def split_outcome(job_blob: bytes) -> bytes:
    """Re-pickle a ``%%distribute`` cell's outcome name by name (run on a worker).

    For an outcome the notebook cannot unpickle as a whole (a value whose class
    exists only on the workers): every name, and the last expression's value,
    get a blob of their own plus their type's name, so the notebook brings back
    what it can. Returns ``{"values": {name: (blob, type)}, "result": (blob, type),
    "deleted": [...], "skipped": {...}}``.
    """
    outcome = cloudpickle.loads(cloudpickle.loads(job_blob))

    def part(value):
        kind = type(value)
        shown = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        return cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL), shown

    split = dict(outcome)
    split["values"] = {name: part(value) for name, value in outcome["values"].items()}
    split["result"] = part(outcome["result"])
    return cloudpickle.dumps(split, protocol=PICKLE_PROTOCOL)
