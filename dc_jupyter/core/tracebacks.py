"""Remote tracebacks as IPython shows them: the arrow on the line that raised.

An exception from a worker arrives with a traceback rebuilt by tblib (as Dask
sends it): each remote frame is a stub whose code object starts at the line
that raised. IPython finds a frame's source from its code object's first line
(``inspect.getsourcelines``, then counts from ``co_firstlineno``), so with such
a stub the arrow lands on the ``def`` line (or line 1 of a cell) instead.
``rebuild`` replaces those stubs by ones that start where the function (or the
cell) starts and raise at the remote line; the worker notes each function's
first line on the exception (``remote.job.note_first_lines``).

``hide_local_frames`` makes a ``%%distribute`` cell's failure show only the
remote frames, as if the cell had raised here: not the ``%%distribute`` line,
nor IPython's or dc_jupyter's frames that ran it.
"""

from __future__ import annotations

import types
from typing import Any

from dc_jupyter.remote.job import FIRST_LINES_ATTR

#: Frames from these files are plumbing; remote tracebacks start at user code.
_PLUMBING = (
    "/distributed/",
    "/dc_jupyter/",
    "<dynamic-code>",
    "dc_jupyter_worker_",  # the worker module as installed on the cluster (backends.dask.install)
    "concurrent/futures/",
    "/tornado/",
)

__all__ = ["hide_local_frames", "rebuild"]


def _chain(exc: BaseException | None):
    seen: set[int] = set()
    todo = [exc]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [exc.__cause__, exc.__context__]


def _is_stub(tb: types.TracebackType) -> bool:
    code = tb.tb_frame.f_code
    return "__traceback_maker" in code.co_names and code.co_firstlineno == tb.tb_lineno


def _stub_frame(old: types.FrameType, first: int, lineno: int) -> types.FrameType | None:
    """A frame of a code object starting at ``first`` that stands at ``lineno``."""
    code = old.f_code
    stub = compile("\n" * (lineno - first) + "raise __traceback_maker", code.co_filename, "exec")
    changes: dict[str, Any] = {"co_firstlineno": first, "co_name": code.co_name}
    if hasattr(code, "co_qualname"):
        changes["co_qualname"] = code.co_qualname
    stub = stub.replace(**changes)
    marker = RuntimeError("stub")
    try:
        exec(stub, {**old.f_globals, "__traceback_maker": marker}, dict(old.f_locals))  # noqa: S102
    except RuntimeError as exc:
        tb = exc.__traceback__
        return tb.tb_next.tb_frame if tb is not None and tb.tb_next is not None else None
    return None


def rebuild(exc: BaseException) -> BaseException:
    """Give the remote frames of ``exc`` (and of the exceptions it chains to)
    code objects that start where their function starts. Returns ``exc``."""
    for one in _chain(exc):
        first_lines = one.__dict__.pop(FIRST_LINES_ATTR, None) or {}
        entries = []
        changed = False
        tb = one.__traceback__
        while tb is not None:
            frame, lasti, lineno = tb.tb_frame, tb.tb_lasti, tb.tb_lineno
            if _is_stub(tb):
                code = frame.f_code
                first = first_lines.get((code.co_filename, code.co_name, lineno))
                if first is None and code.co_name == "<module>":
                    first = 1
                if first is not None and first < lineno:
                    better = _stub_frame(frame, first, lineno)
                    if better is not None:
                        frame, lasti, changed = better, better.f_lasti, True
            entries.append((frame, lasti, lineno))
            tb = tb.tb_next
        if changed:
            new = None
            for frame, lasti, lineno in reversed(entries):
                new = types.TracebackType(new, frame, lasti, lineno)
            one.__traceback__ = new
    return exc


def _is_local_plumbing(filename: str) -> bool:

    return any(p in filename for p in _PLUMBING) or "/IPython/" in filename


def hide_local_frames(exc: BaseException, shell: Any) -> None:
    """Show ``exc`` once (IPython's ``_render_traceback_``) from its first remote
    frame on: a failed ``%%distribute`` cell reads like a cell that failed here.

    Call it where the cell's run gives up; the frames between the cell and the
    remote ones (IPython's, dc_jupyter's) are dropped. Nothing changes when no
    frame is left, or outside IPython.
    """
    tb = exc.__traceback__
    while tb is not None and _is_local_plumbing(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    formatter = getattr(shell, "InteractiveTB", None)
    if tb is None or formatter is None:
        return
    remote = tb

    def render() -> list[str]:
        exc.__dict__.pop("_render_traceback_", None)  # once: a later raise shows its frames
        return formatter.structured_traceback(type(exc), exc, remote, tb_offset=0)

    def forget(*_args: Any) -> None:
        exc.__dict__.pop("_render_traceback_", None)
        try:
            shell.events.unregister("post_run_cell", forget)
        except ValueError:
            pass

    try:
        exc._render_traceback_ = render
        shell.events.register("post_run_cell", forget)
    except Exception:  # no event manager: show the usual traceback
        vars(exc).pop("_render_traceback_", None)
