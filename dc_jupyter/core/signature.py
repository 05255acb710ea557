"""Check a call's arguments against a function's signature, as Python would.

A stub with the same parameters (and an empty body) is compiled once per
function; calling it makes CPython itself raise the ``TypeError``, with its
own wording ("f() missing 1 required positional argument: 'x'"), at C speed.
The stub returns the bound arguments, which name values in error messages.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable
from typing import Any

_KIND_ORDER = [
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
    inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD,
]


def make_binder(func: Callable, name: str | None = None) -> Callable[..., dict[str, Any]]:
    """Return ``bind(*args, **kwargs) -> {parameter: value}`` for ``func``.

    Raises ``ValueError`` if ``func`` has no inspectable signature.
    """
    signature = inspect.signature(func)
    name = name or getattr(func, "__name__", "function")
    params = list(signature.parameters.values())
    if not all(p.name.isidentifier() and not keyword.iskeyword(p.name) for p in params):
        return _fallback_binder(signature)

    namespace: dict[str, Any] = {}
    parts: list[str] = []
    slash_done = not any(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in params)
    star_done = False
    for i, p in enumerate(params):
        if not slash_done and p.kind is not inspect.Parameter.POSITIONAL_ONLY:
            parts.append("/")
            slash_done = True
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star_done = True
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            parts.append(f"**{p.name}")
            continue
        if p.default is not inspect.Parameter.empty:
            namespace[f"__dc_default_{i}"] = p.default
            parts.append(f"{p.name}=__dc_default_{i}")
        else:
            parts.append(p.name)
    if not slash_done:
        parts.append("/")

    source = f"def {_safe(name)}({', '.join(parts)}):\n    return locals()\n"
    exec(compile(source, f"<signature of {name}>", "exec"), namespace)
    stub = namespace[_safe(name)]
    code = stub.__code__
    # CPython's messages use the qualified name ("Model.fit() takes ...").
    qualname = getattr(func, "__qualname__", name)
    replace: dict[str, Any] = {"co_name": name if name.isidentifier() else "function"}
    if hasattr(code, "co_qualname"):
        replace["co_qualname"] = qualname
    stub.__code__ = code.replace(**replace)
    stub.__qualname__ = qualname
    return stub


def _safe(name: str) -> str:
    return name if name.isidentifier() and not keyword.iskeyword(name) else "function"


def _fallback_binder(signature: inspect.Signature) -> Callable[..., dict[str, Any]]:
    def bind(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(signature.bind(*args, **kwargs).arguments)

    return bind


def labelled_arguments(bound: dict[str, Any], func: Callable) -> list[tuple[str, Any]]:
    """``(label, value)`` pairs for error messages: ``argument 'x'``, ``argument args[1]``."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}
    labelled: list[tuple[str, Any]] = []
    for pname, value in bound.items():
        kind = params[pname].kind if pname in params else None
        if kind is inspect.Parameter.VAR_POSITIONAL:
            labelled += [(f"argument {pname}[{i}]", v) for i, v in enumerate(value)]
        elif kind is inspect.Parameter.VAR_KEYWORD:
            labelled += [(f"argument {k!r}", v) for k, v in value.items()]
        else:
            labelled.append((f"argument {pname!r}", value))
    return labelled
