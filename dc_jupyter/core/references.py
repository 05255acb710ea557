"""Which modules a pickle refers to by name: the workers must be able to import them.

``core.pickling`` hands over the pickler's memo after a dump: every module,
class, function and code object the pickle saved went through it. Those
cloudpickle sent by value need no module, but the ``import`` statements in
their code do. Not for deciding what is local code (``backends.dask.localcode``).
"""

from __future__ import annotations

import dis
import sys
import types
from collections.abc import Iterable
from typing import Any

import cloudpickle


def by_value(obj: Any, registered: set[str] | None = None) -> bool:
    """Whether cloudpickle sends ``obj`` (a function or class) by value, not by name:
    defined in the notebook, in a module registered by value, or not found by
    its name (a nested function)."""
    module_name = getattr(obj, "__module__", None)
    module = sys.modules.get(module_name) if module_name else None
    if module is None or module_name == "__main__":
        return True
    if registered is None:
        registered = _registered_by_value()
    if module_name.partition(".")[0] in registered:
        return True
    found: Any = module
    for part in getattr(obj, "__qualname__", "").split("."):
        found = getattr(found, part, None)
    return found is not obj


def _registered_by_value() -> set[str]:
    return {name.partition(".")[0] for name in cloudpickle.list_registry_pickle_by_value()}


#: Functions and classes seen before -> the top-level module they are pickled
#: by ("" when by value), so a call's pickle costs a dict lookup per object.
_named: dict[int, tuple[Any, str]] = {}
#: Whole kinds that name no module: skipped with one set lookup (the hot path).
_PLAIN = frozenset({str, bytes, tuple, list, dict, int, float, type(None), types.CellType})
#: id(code object) -> (code, top-level modules its ``import`` statements name);
#: kept small, as notebook functions are redefined.
_code_imports: dict[int, tuple[types.CodeType, frozenset[str]]] = {}
_CODE_CACHE_SIZE = 4096  # for both caches


def _imports_in(code: types.CodeType) -> frozenset[str]:
    """Modules a function sent by value imports when it runs (``import mypkg`` in its body)."""
    hit = _code_imports.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    names, loaded = set(), [None, None]
    for ins in dis.get_instructions(code):
        # IMPORT_NAME follows LOAD_CONST level, LOAD_CONST fromlist; level > 0 is relative.
        if ins.opname == "IMPORT_NAME" and ins.argval and not loaded[0]:
            names.add(ins.argval.partition(".")[0])
        loaded = [loaded[1], ins.argval if ins.opname == "LOAD_CONST" else None]
    if len(_code_imports) >= _CODE_CACHE_SIZE:
        _code_imports.clear()
    found = frozenset(names)
    _code_imports[id(code)] = (code, found)
    return found


def modules_in(memo: Iterable[tuple[int, Any]]) -> set[str]:
    """Top-level modules named in a pickle: every module, class and function it
    saved went through the memo; those saved by value need no module."""
    names: set[str] = set()
    registered = None
    for _, obj in memo:
        if type(obj) in _PLAIN:
            continue
        hit = _named.get(id(obj))
        if hit is not None and hit[0] is obj:
            if hit[1]:
                names.add(hit[1])
            continue
        kind = type(obj)
        if kind is types.CodeType:
            names.update(_imports_in(obj))
        elif kind is types.ModuleType:
            names.add(obj.__name__.partition(".")[0])
        elif isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            module = getattr(obj, "__module__", None)
            if module == "__main__" or not isinstance(module, str):  # the notebook's own
                continue
            if registered is None:
                registered = _registered_by_value()
            top = "" if by_value(obj, registered) else module.partition(".")[0]
            if len(_named) >= _CODE_CACHE_SIZE:  # closures made per call would pile up
                _named.clear()
            _named[id(obj)] = (obj, top)  # by value (""): looked up once too
            if top:
                names.add(top)
    return names
