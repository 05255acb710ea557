"""Run a notebook cell on the cluster: the plain function behind ``%%distribute``.

Analyse the cell, capture the notebook values it reads, check them before
anything is sent, run it through the same ``Job``/backend machinery as
``@compute_this`` (so timeouts, retries, resources, widgets and
cancel-on-interrupt apply), stream its output, and put every name it bound
back into the notebook namespace at once. On failure the namespace is left
untouched. Not for: parsing magic options (``cell.magic``), worker-side code
(``remote.cell``).
"""

from __future__ import annotations

import sys
import threading
import types
import uuid
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from dc_jupyter import config
from dc_jupyter.cell.analysis import CellAnalysis, analyze_cell
from dc_jupyter.cell.futures import CellFuture, SweepFuture
from dc_jupyter.core import output as live_output
from dc_jupyter.core import pickling
from dc_jupyter.core.function import JobOptions, RemoteFunction
from dc_jupyter.core.futures import format_exception_summary
from dc_jupyter.core.job import wait_or_cancel
from dc_jupyter.core.map import MapJob, take_items
from dc_jupyter.core.tracebacks import hide_local_frames
from dc_jupyter.errors import SerializationError
from dc_jupyter.remote import cell as remote_cell
from dc_jupyter.ui.display import show, watching
from dc_jupyter.ui.render import short_repr

__all__ = ["CellOptions", "run_cell"]

pickling.cloudpickle.register_pickle_by_value(remote_cell)

#: Provided on the worker (``remote_cell.WorkerShell``; ``display`` by
#: ``remote.output``, as IPython provides it), never shipped.
_PROVIDED_ON_WORKER = frozenset({"get_ipython", "display"})


@dataclass(frozen=True)
class CellOptions:
    """The options of ``%%distribute`` (see ``cell.magic`` for their spelling)."""

    run_async: bool = False
    out: str | None = None
    local: bool = False
    retries: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    timeout: float | str | None = None
    pull: tuple[str, ...] | None = None
    scheduler: str | None = None
    map_name: str | None = None
    map_expr: str | None = None


def run_cell(shell: Any, cell: str, options: CellOptions | None = None, header: str = "") -> Any:
    """Run ``cell`` (IPython source) on the cluster as if it ran in ``shell``.

    Returns the value of the cell's last expression (a list of them with
    ``--map``), or None, or with ``--async`` nothing: the namespace is
    updated when the work finishes.
    """
    __tracebackhide__ = True
    options = options or CellOptions()
    plan = _plan(shell, cell, options, header)
    remote = RemoteFunction(remote_cell.run_cell, _job_options(options))
    remote.__name__ = "cell"  # Dask keys: cell-<id>, cell-map-<token>-<batch>
    cell_id = f"cell-{uuid.uuid4().hex}"
    args = plan.worker_args(cell_id)
    label = _label(shell, options)
    # Output streams like any job's (``core.output``); an --async cell's goes into
    # a display of its own, since its cell has ended when it arrives.
    own_display = live_output.output_display() if options.run_async else None
    if options.map_name is None:
        job = remote(*args, check_in_place=plan.check_in_place)
        job.key = cell_id
        job.modules.update(plan.modules)
        inner = job.submit()
        handle = CellFuture.adopt(inner, label, options.run_async, plan.analysis.has_result)
        output = getattr(inner, "output", None)
    else:
        # One item per element; the map batches them like any map (a batch's
        # worker stops after its time budget, so slow elements run one per task).
        n = len(plan.elements)
        columns = [[a] * n for a in args] + [range(n), [options.map_name] * n, plan.elements]
        prefixes = [_element_prefix(options.map_name, e) for e in plan.elements]
        sweep = MapJob(remote, tuple(columns))
        sweep.item_prefix = prefixes.__getitem__
        sweep.modules.update(plan.modules)
        inner = sweep.submit()
        handle = SweepFuture(inner, label, options.run_async)
        output = inner._output
    if output is not None and own_display is not None:
        output.target.handle = own_display
    if options.out:
        shell.user_ns[options.out] = handle
    if options.run_async:
        timer = _AsyncTimeout(handle, _job_options(options).timeout)
        # ``inner`` kept alive until then: dropping it would stop its output.
        handle.add_done_callback(
            lambda _, keep=inner: _finish_async(shell, plan, handle, output, timer)
        )
        show(handle, label)
        return None
    with watching(handle, label):
        _wait(handle, output, _job_options(options).timeout)
        try:
            outcome = _outcome(plan, handle)
        except BaseException as exc:  # shown like a failure of a cell run here
            hide_local_frames(exc, shell)
            raise
    return _apply(shell, plan, outcome)


def _label(shell: Any, options: CellOptions) -> str:
    """What the widget calls the cell: ``In[7] %%distribute`` (``--map x`` for a sweep)."""
    label = f"In[{cell_number(shell)}] %%distribute"
    return f"{label} --map {options.map_name}" if options.map_name else label


def cell_number(shell: Any) -> int:
    """The ``n`` of ``In[n]`` of the cell running now.

    IPython 9 raises ``execution_count`` before a cell runs, IPython 8 after, so
    it is read where IPython itself records it: the file name it compiled the
    running cell under (the frame that called the magic) maps to the number.
    """
    numbers = getattr(shell.compile, "_filename_map", {})
    frame = sys._getframe(1)
    while frame is not None:
        number = numbers.get(frame.f_code.co_filename)
        if number is not None and frame.f_code.co_name == "<module>":  # not a cell's function
            return number
        frame = frame.f_back
    return shell.execution_count  # called outside a running cell


# -- before sending ----------------------------------------------------------------------


@dataclass
class _Plan:
    source: str
    filename: str
    analysis: CellAnalysis
    blob: bytes
    names: tuple[str, ...]
    send_all: bool
    options: CellOptions
    elements: list = field(default_factory=list)
    #: Top-level modules the cell imports or its values refer to.
    modules: set[str] = field(default_factory=set)
    #: Look for captured values changed in place (not with --pull: they would not come back).
    check_in_place: bool = True

    def worker_args(self, cell_id: str) -> tuple:
        return (
            self.source,
            self.filename,
            self.blob,
            cell_id,
            self.names,
            () if self.options.pull else self.analysis.deleted,
            self.send_all,
            self.analysis.has_result,
        )


def _plan(shell: Any, cell: str, options: CellOptions, header: str) -> _Plan:
    """Everything checked locally; raises before anything is sent."""
    transformed = shell.transform_cell(cell)
    # Register the cell's source under the name IPython gives this execution, so
    # remote tracebacks (which carry only file names and line numbers) show the
    # cell's own lines. The header line keeps line numbers as in the notebook.
    header = header or "%%distribute"
    filename = shell.compile.cache(
        f"{header}\n{transformed}", cell_number(shell), raw_code=f"{header}\n{cell}"
    )
    source = "\n" + transformed
    analysis = analyze_cell(source, filename)
    user_ns = shell.user_ns
    provided = _PROVIDED_ON_WORKER | ({options.map_name} if options.map_name else set())
    if not _is_ipython_display(user_ns.get("display")):
        provided = provided - {"display"}  # the notebook's own ``display``: send it
    captured: dict[str, Any] = {}
    for name in analysis.inputs:
        if name in provided:
            continue
        if name in user_ns:
            captured[name] = user_ns[name]
        elif (
            name not in analysis.outputs
            and name not in analysis.late_inputs  # a function body's: looked up when called
            and not analysis.star_import
        ):
            raise NameError(
                f"name {name!r} is not defined: the cell reads it, but it is not in the "
                "notebook, not a builtin, and the cell does not assign it. Nothing was sent.",
                name=name,
            )
    for name in analysis.builtins_read:  # a notebook variable shadowing a builtin
        if name in user_ns and name not in provided:
            captured[name] = user_ns[name]
    names = analysis.outputs
    if options.pull is not None:
        unknown = [n for n in options.pull if n not in analysis.outputs]
        if unknown and not analysis.star_import:
            raise UsageError(
                f"--pull {','.join(options.pull)}: the cell does not assign "
                f"{', '.join(map(repr, unknown))}; it assigns {', '.join(analysis.outputs) or 'nothing'}."
            )
        names = tuple(options.pull)
    elements: list = []
    if options.map_name is not None:
        elements = _sweep_elements(shell, options)
    modules = set(analysis.imports)
    return _Plan(
        source=source,
        filename=filename,
        analysis=analysis,
        blob=_pickle_inputs(captured, modules),
        names=tuple(names),
        send_all=analysis.star_import and options.pull is None,
        options=options,
        elements=elements,
        modules=modules,
        check_in_place=options.pull is None and bool(config.get("check-in-place", True)),
    )


def _is_ipython_display(value: Any) -> bool:
    """Whether ``value`` is (or stands for) IPython's ``display``, which workers provide."""
    return value is None or (
        getattr(value, "__name__", None) == "display"
        and str(getattr(value, "__module__", "")).startswith("IPython")
    )


def _sweep_elements(shell: Any, options: CellOptions) -> list:
    try:
        values = eval(options.map_expr, shell.user_ns)  # noqa: S307 - the user's own notebook
    except SyntaxError as exc:
        raise UsageError(
            f"--map {options.map_name} in {options.map_expr}: the expression is not valid "
            f"Python ({exc.msg}). Put --map last on the line, e.g. `%%distribute --map x in range(4)`."
        ) from None
    try:
        iterator = iter(values)
    except TypeError:
        raise UsageError(
            f"--map {options.map_name} in {options.map_expr}: a {type(values).__name__} is not "
            "iterable; give a list, range or other iterable."
        ) from None
    return take_items(iterator, f"--map {options.map_name} in {options.map_expr}", UsageError)


def _pickle_inputs(captured: dict[str, Any], modules: set[str]) -> bytes:
    try:
        return pickling.dumps(captured, modules)
    except Exception as exc:
        culprit = pickling.find_unpicklable(captured.items())
        if culprit is None:
            raise SerializationError(
                f"Cannot pickle the notebook values the cell reads: {type(exc).__name__}: {exc}. "
                "Nothing was sent."
            ) from exc
        name, value, error = culprit
        raise SerializationError(
            f"Cannot send the variable {name!r} to the cluster: a {pickling.type_name(value)} "
            f"cannot be pickled ({type(error).__name__}: {error}). Nothing was sent. Create it "
            "inside the cell instead, or do not use it there."
        ) from error


def _job_options(options: CellOptions) -> JobOptions:
    try:
        return JobOptions(
            backend="local" if options.local else None,
            retries=options.retries,
            resources=dict(options.resources),
            timeout=options.timeout,
            address=options.scheduler,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"%%distribute: {exc}") from None


# -- sending and waiting ---------------------------------------------------------------


def _element_prefix(name: str, element: Any) -> str:
    """``[p=2] ``: what each printed line of a sweep's element starts with."""
    return f"[{name}={short_repr(element, 24)}] "


def _wait(handle: Any, output: live_output.Listener | None, timeout: float | None) -> None:
    """Wait for ``handle``; its output is written as it arrives (``core.output``)."""
    __tracebackhide__ = True
    wait_or_cancel(handle, timeout, name="The cell", hint="--timeout")
    if output is not None:
        output.finish()
        output.wait_written()


def _outcome(plan: _Plan, handle: Any) -> dict:
    """The cell's decoded outcome; a sweep's parts merged into lists in input order."""
    __tracebackhide__ = True
    if plan.options.map_name is None:
        return handle.outcome()
    parts = handle.parts()
    values = {}
    per_element = []
    for name in plan.names:
        if not any(name in part["values"] for part in parts):
            continue
        each = [part["values"].get(name) for part in parts]
        if all(name in part["values"] for part in parts) and _one_value(each):
            values[name] = each[0]  # `import math` in a sweep: still the module
        else:
            values[name] = each
            per_element.append(name)
    skipped = {k: v for part in parts for k, v in part.get("skipped", {}).items()}
    results = [part["result"] for part in parts]
    return {
        "values": values,
        "deleted": [],
        # A last line such as print(...) gives None in every element: show nothing,
        # as IPython shows nothing for None.
        "result": results if any(r is not None for r in results) else None,
        "skipped": skipped,
        "per_element": per_element,
    }


#: What a sweep's elements may bind to one shared object: modules, functions,
#: classes. A computed value stays a list even when the elements agree on it,
#: so its type never depends on the data.
_SHARED_KINDS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def _one_value(values: list) -> bool:
    """True when every element bound the same module, function or class: the same
    object, or (defined by value in each element) the same pickle."""
    first = values[0]
    if not isinstance(first, _SHARED_KINDS):
        return False
    if all(v is first for v in values):
        return True
    try:
        blob = pickling.dumps(first)
        return all(type(v) is type(first) and pickling.dumps(v) == blob for v in values[1:])
    except Exception:  # cannot compare: keep them apart
        return False


def _apply(shell: Any, plan: _Plan, outcome: dict) -> Any:
    """Put the cell's names into the notebook namespace, all at once."""
    user_ns = shell.user_ns
    values = outcome["values"]
    changed = [n for n in outcome.get("changed", ()) if n in values]
    if plan.options.pull is not None:  # only the names asked for come back
        values = {n: v for n, v in values.items() if n not in changed or n in plan.names}
        changed = [n for n in changed if n in plan.names]
    _warn_replaced_by_lists(plan, outcome, user_ns)
    if plan.options.pull is None and plan.options.map_name is None:
        values = {name: _rehome(value, user_ns) for name, value in values.items()}
    user_ns.update(values)
    for name in outcome["deleted"]:
        user_ns.pop(name, None)
    if changed:
        print(
            f"%%distribute: {', '.join(changed)} changed in place on the cluster; "
            "the changed value replaces the notebook's.",
            file=sys.stderr,
        )
    for name, reason in outcome.get("skipped", {}).items():
        print(
            f"%%distribute: {name!r} was not brought back: {reason}. Delete it at the end of "
            "the cell, or choose what comes back with --pull a,b.",
            file=sys.stderr,
        )
    return outcome["result"] if plan.analysis.has_result else None


def _warn_replaced_by_lists(plan: _Plan, outcome: dict, user_ns: dict) -> None:
    """A sweep turns each name it computes into a list: say so when that replaces
    a notebook value that was not a list, so a later cell's surprise has a cause."""
    name = plan.options.map_name
    for var in outcome.get("per_element", []):
        if var in user_ns and not isinstance(user_ns[var], list):
            print(
                f"%%distribute --map {name}: {var!r} was a {pickling.type_name(user_ns[var])} "
                f"in the notebook and is now a list of {len(outcome['values'][var])} values, one "
                f"per element ({var}[i] is element i's). Use another name in the cell to keep it.",
                file=sys.stderr,
            )


def _rehome(value: Any, user_ns: dict) -> Any:
    """Give a function (or a class's methods) defined in the cell the notebook's globals.

    Pickling gave them a private copy of the globals they used; rebinding makes
    them see later notebook changes and lets ``global`` statements work, as if
    the cell had run here.
    """
    if isinstance(value, types.FunctionType) and _from_cell(value.__globals__, user_ns):
        new = types.FunctionType(
            value.__code__, user_ns, value.__name__, value.__defaults__, value.__closure__
        )
        new.__kwdefaults__ = value.__kwdefaults__
        new.__dict__.update(value.__dict__)
        new.__qualname__ = value.__qualname__
        new.__annotations__ = value.__annotations__
        new.__doc__ = value.__doc__
        new.__module__ = value.__module__
        return new
    if isinstance(value, type) and value.__module__ == "__main__":
        for attr, member in list(vars(value).items()):
            if isinstance(member, types.FunctionType) and _from_cell(member.__globals__, user_ns):
                setattr(value, attr, _rehome(member, user_ns))
    return value


def _from_cell(func_globals: dict, user_ns: dict) -> bool:
    # Unpickled functions get a fresh globals dict holding just what they use.
    return func_globals is not user_ns and func_globals.get("__name__") == "__main__"


# -- --async -----------------------------------------------------------------------------


class _AsyncTimeout:
    """``--timeout`` of an ``--async`` cell: nobody waits, so a timer cancels it."""

    def __init__(self, handle: Any, timeout: float | None) -> None:
        self.timeout = timeout
        self.expired = False
        self._handle = handle
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._expire)
            self._timer.name = "dc_jupyter-cell-timeout"
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        if not self._handle.done():
            self.expired = True
            self._handle.cancel()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _finish_async(
    shell: Any, plan: _Plan, handle: Any, output: live_output.Listener | None, timer: _AsyncTimeout
) -> None:
    timer.stop()
    try:
        if output is not None:
            output.finish()
            output.wait_written()
        if timer.expired:
            print(
                f"%%distribute --async cell did not finish within {timer.timeout:g} s; its "
                "remote work was cancelled and the namespace was not changed. Raise "
                "--timeout if it needs longer.",
                file=sys.stderr,
            )
            return
        try:
            outcome = _outcome(plan, handle)
        except BaseException as exc:
            print(
                f"%%distribute --async cell failed: {format_exception_summary(exc)} "
                "(the namespace was not changed; handle.result() raises it)",
                file=sys.stderr,
            )
            return
        _apply(shell, plan, outcome)
    finally:
        handle.namespace_updated()  # lets handle.result() return
