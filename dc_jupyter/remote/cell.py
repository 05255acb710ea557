"""What runs on a worker for ``%%distribute``: execute a cell, stream its output.

Shipped *by value* like ``remote.job`` (workers do not have dc_jupyter): import
only the standard library, cloudpickle and functions of ``remote.job`` (which
travel by value too) here; ``distributed`` only lazily,
inside functions, since every Dask worker has it and the local backend may not
run on one.

The cell's output (prints, ``display()``, figures, warnings, log records)
is sent to the notebook by the task running it (``remote.output``, used by
``remote.job.run_job`` and ``run_batch``), as for any job.
"""

from __future__ import annotations

import ast
import builtins
import sys

import cloudpickle

# Functions, not the module: only what the cell uses travels (by value) with it.
from dc_jupyter.remote.job import dumps_keeping_filenames, inside_job, run_coroutine, type_name

PICKLE_PROTOCOL = 5


def run_cell(
    source: str,
    filename: str,
    namespace_blob: bytes,
    cell_id: str,
    names: tuple,
    deleted: tuple,
    send_all: bool,
    has_result: bool,
    part: int = 0,
    sweep_name: str | None = None,
    sweep_value=None,
    check_in_place: bool = True,
) -> bytes:
    """Run ``source`` in a namespace made of the captured values.

    Returns a pickled dict: ``values`` (the ``names`` the cell left bound; every
    name if ``send_all``), ``deleted`` (of ``deleted``, those now unbound),
    ``result`` (the last expression's value when ``has_result``) and ``changed``
    (captured values the cell changed in place; their values are in ``values``;
    never looked for without ``check_in_place``).
    """
    namespace = cloudpickle.loads(namespace_blob)
    namespace["__name__"] = "__main__"  # so cloudpickle sends cell functions by value
    namespace["__builtins__"] = builtins
    if sweep_name is not None:
        namespace[sweep_name] = sweep_value
    if "get_ipython" in source:  # %time / !cmd lines were turned into get_ipython() calls
        shell = WorkerShell(namespace)
        namespace["get_ipython"] = lambda: shell
    tree = ast.parse(source, filename)
    last = tree.body.pop() if has_result and tree.body else None
    watched = _snapshot(namespace, names) if check_in_place and sweep_name is None else {}
    # Output is forwarded by the task around this (``remote.output``, from
    # ``run_job`` / ``run_batch``), and ``display`` is a builtin there.
    with inside_job():
        result = _execute(tree, last, filename, namespace)
    if send_all:
        skip = {sweep_name, "get_ipython"}
        names = [n for n in namespace if not n.startswith("__") and n not in skip]
    values = {n: namespace[n] for n in names if n in namespace}
    changed = _changed(namespace, watched)
    values.update({n: namespace[n] for n in changed})
    gone = [n for n in deleted if n not in namespace]
    return _dump_outcome({"values": values, "deleted": gone, "result": result, "changed": changed})


# -- compiling and running as IPython does -------------------------------------------

#: IPython's flags for a cell: top-level ``await`` allowed. ``dont_inherit`` keeps
#: this module's own ``from __future__`` flags out of the user's code.
_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def _execute(tree: ast.Module, last, filename: str, namespace: dict):
    """Run the cell's statements, then evaluate ``last`` (its final expression).

    A cell with top-level ``await`` compiles to a coroutine, run on one event
    loop for the whole cell, as IPython's autoawait runs it.
    """
    loop = None
    try:
        code = compile(tree, filename, "exec", flags=_FLAGS, dont_inherit=True)
        loop = _run(eval(code, namespace), loop)  # noqa: S307 - the user's own cell
        if last is None:
            return None
        expression = compile(
            ast.Expression(last.value), filename, "eval", flags=_FLAGS, dont_inherit=True
        )
        value = eval(expression, namespace)  # noqa: S307
        if _is_coroutine_code(expression):
            loop = loop or _new_loop()
            value = run_coroutine(value, loop)
        return value
    finally:
        if loop is not None:
            loop.close()


def _run(outcome, loop):
    """Await what a cell's ``exec``-mode code returned, if it is a coroutine; the loop used."""
    import inspect

    if not inspect.iscoroutine(outcome):
        return loop
    loop = loop or _new_loop()
    run_coroutine(outcome, loop)
    return loop


def _new_loop():
    import asyncio

    return asyncio.new_event_loop()


def _is_coroutine_code(code) -> bool:
    import inspect

    return bool(code.co_flags & inspect.CO_COROUTINE)


# -- in-place changes ------------------------------------------------------------------

#: Never compared: values that cannot change in place, and code (modules,
#: functions, classes), which a cell uses rather than changes.
_NOT_WATCHED = (int, float, complex, bool, str, bytes, type(None), range, type)


def _snapshot(namespace: dict, assigned) -> dict:
    """Pickles of the captured notebook values the cell does not assign, to compare
    after it ran: a change in place (``results.append(x)``) is found there."""
    import types

    code = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    watched = {}
    skip = set(assigned)
    for name, value in namespace.items():
        if name.startswith("__") or name in skip or isinstance(value, _NOT_WATCHED + code):
            continue
        if hasattr(value, "__wrapped__") and callable(value):
            # Code too: a decorated function (its worker-side pickle differs after
            # it sent work from here), an lru_cache helper (its cache fills).
            continue
        try:
            watched[name] = (value, _digest(value))
        except Exception:  # cannot pickle it here: it cannot come back either
            pass
    return watched


def _digest(value) -> bytes:
    """A hash of ``value``'s pickle: equal before and after unless it changed.

    A digest, not the pickle, so a big captured array is not held twice; its
    data is hashed where it lies (pickle protocol 5 buffers), without a copy.
    Change detection, not security: SHA-1 is the fastest stdlib hash here.
    """
    import hashlib
    import io

    buffers = []
    stream = io.BytesIO()
    cloudpickle.Pickler(stream, protocol=PICKLE_PROTOCOL, buffer_callback=buffers.append).dump(
        value
    )
    digest = hashlib.sha1(stream.getbuffer(), usedforsecurity=False)
    for buffer in buffers:
        digest.update(buffer.raw())
    return digest.digest()


def _changed(namespace: dict, watched: dict) -> list:
    """Names of watched values that are still bound to the same object, changed."""
    changed = []
    for name, (value, before) in watched.items():
        if namespace.get(name) is not value:
            continue  # rebound or deleted by code the analysis could not see
        try:
            if _digest(value) != before:
                changed.append(name)
        except Exception:
            pass
    return changed


# -- results -------------------------------------------------------------------------


def _dumps(value) -> bytes:
    # Functions the cell defines come back to the notebook; keep their file
    # name (the cell's) so later tracebacks still show the cell's lines.
    return dumps_keeping_filenames(value)


def _dump_outcome(outcome: dict) -> bytes:
    """Pickle the outcome; a variable that cannot be pickled is left out and reported.

    Everything goes in one pickle so that objects shared between names stay
    shared, and instances keep the very class the cell defined.
    """
    try:
        return _dumps(outcome)
    except Exception:
        pass
    try:
        _dumps(outcome["result"])
    except Exception as exc:
        raise TypeError(
            f"The cell's last expression is a {type_name(outcome['result'])}, which cannot be "
            f"pickled to send back to the notebook ({type(exc).__name__}: {exc}). End the cell "
            "with a value that can (numbers, strings, lists, dicts, arrays)."
        ) from None
    skipped = {}
    for name, value in list(outcome["values"].items()):
        try:
            _dumps(value)
        except Exception as exc:
            skipped[name] = f"a {type_name(value)} cannot be pickled ({type(exc).__name__}: {exc})"
            del outcome["values"][name]
    outcome["skipped"] = skipped
    return _dumps(outcome)


# -- IPython syntax inside the cell ----------------------------------------------------


class WorkerShell:
    """What ``get_ipython()`` returns inside a cell on a worker.

    IPython turns ``%time``/``!cmd`` lines into calls on the shell; a worker has
    no IPython shell, so the few magics that make sense there are done here and
    the rest are refused with a clear message.
    """

    def __init__(self, namespace: dict) -> None:
        self.namespace = namespace
        self.user_ns = namespace

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 1):
        if name == "time":
            return self._time(line)
        raise NotImplementedError(
            f"%{name} is not available inside %%distribute (the worker has no IPython "
            "shell); %time, !command and x = !command are. Run it in a cell of its own."
        )

    def run_cell_magic(self, name: str, line: str, cell: str):
        if name == "time":
            return self._time(cell)
        raise NotImplementedError(
            f"%%{name} is not available inside %%distribute (the worker has no IPython shell)."
        )

    def system(self, command: str) -> None:
        import subprocess

        proc = subprocess.run(command, shell=True, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        self.namespace["_exit_code"] = proc.returncode

    def getoutput(self, command: str, split: bool = True, depth: int = 0):
        import subprocess

        proc = subprocess.run(command, shell=True, capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        return text.splitlines() if split else text

    def _time(self, code: str):
        import os
        import time

        tree = ast.parse(code, "<timed exec>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        start_times, start_wall = os.times(), time.perf_counter()
        exec(compile(tree, "<timed exec>", "exec", dont_inherit=True), self.namespace)
        value = None
        if last is not None:
            expression = ast.Expression(last.value)
            value = eval(
                compile(expression, "<timed eval>", "eval", dont_inherit=True), self.namespace
            )
        end_times, wall = os.times(), time.perf_counter() - start_wall
        user = end_times.user - start_times.user
        system = end_times.system - start_times.system
        print(
            f"CPU times: user {_format_time(user)}, sys: {_format_time(system)}, "
            f"total: {_format_time(user + system)}\nWall time: {_format_time(wall)}"
        )
        return value


def _format_time(seconds: float) -> str:
    # Same units as IPython's %time.
    if seconds >= 1:
        return f"{seconds:.3g} s"
    for unit, scale in (("ms", 1e3), ("µs", 1e6), ("ns", 1e9)):
        if seconds * scale >= 1 or unit == "ns":
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds:.3g} s"
