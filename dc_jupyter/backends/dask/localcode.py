"""Which modules are the user's own code, and their source as it is on disk now.

A top-level module is *local* when its file lies outside the standard library
and the environment's site-packages: a ``mylib.py`` or a package next to the
notebook, anything on a ``sys.path`` entry the user added, an editable install
of the user's project. Those travel to the workers by value
(``backends.dask.modules``); everything else must be installed there. Not for
talking to the cluster (``modules``) nor for the worker side (``remote.modules``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import site
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: Never shipped nor checked: the workers have them (the versions are checked
#: on connect) or must not get them (dc_jupyter itself stays off the workers).
ALWAYS_THERE = frozenset(
    {"__main__", "__mp_main__", "dc_jupyter", "cloudpickle", "dask", "distributed"}
)


@dataclass(frozen=True)
class LocalUnit:
    """A local top-level module: one ``.py`` file, or a package directory."""

    name: str
    root: Path
    files: tuple[Path, ...]

    def stamp(self) -> tuple:
        """Changes when a file changes (or one is added to the package): a few ``stat``s."""
        return tuple(_stat(path) for path in (self.root, *self.files))

    def sources(self) -> tuple[dict[str, tuple[str, bytes, bool]], str]:
        """``{module name: (path, source, is_package)}`` and a digest of it all."""
        modules: dict[str, tuple[str, bytes, bool]] = {}
        digest = hashlib.sha1()
        for path in self.files:
            try:
                source = path.read_bytes()
            except OSError:  # deleted meanwhile: the next stamp differs
                continue
            name, is_package = _module_name(self, path)
            modules[name] = (str(path), source, is_package)
            digest.update(name.encode() + b"\0" + source + b"\0")
        return modules, digest.hexdigest()[:16]


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (0, -1)
    return (info.st_mtime_ns, info.st_size)


def _module_name(unit: LocalUnit, path: Path) -> tuple[str, bool]:
    if unit.root.is_file():
        return unit.name, False
    parts = list(path.relative_to(unit.root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join([unit.name, *parts]), is_package


@lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    """Directories whose modules are installed, not the user's own."""
    roots = {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    roots.add(site.getusersitepackages())
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        roots.add(os.path.join(prefix, "lib"))
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def _origin(name: str) -> str | None:
    """The file module ``name`` was (or would be) loaded from, without importing it."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def find_unit(name: str, extra: frozenset[str] = frozenset()) -> LocalUnit | None:
    """The local unit behind top-level module ``name``, or None if it is installed
    (or unknown here). ``extra``: names shipped even from site-packages
    (``dc_jupyter.ship-modules``)."""
    if name in ALWAYS_THERE or (name in sys.stdlib_module_names and name not in extra):
        return None
    origin = _origin(name)
    if not origin or not origin.endswith(".py"):
        return None  # built in, compiled, a namespace package: cannot ship source
    real = os.path.realpath(origin)
    if name not in extra and real.startswith(_installed_roots()):
        return None
    path = Path(real)
    if path.name == "__init__.py":
        root = path.parent
        files = tuple(
            sorted(
                p
                for p in root.rglob("*.py")
                if "__pycache__" not in p.parts
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
        )
        return LocalUnit(name, root, files)
    return LocalUnit(name, path, (path,))


def imports_of(modules: dict[str, tuple[str, bytes, bool]]) -> frozenset[str]:
    """Top-level modules a unit's sources import (absolute imports, anywhere in them)."""
    found: set[str] = set()
    for _path, source, _is_package in modules.values():
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):  # it fails on the worker as it does here
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.partition(".")[0])
    return frozenset(found - {name.partition(".")[0] for name in modules})


def is_stdlib(name: str) -> bool:
    """Whether every Python has ``name`` (so the workers need not be asked)."""
    return name in sys.stdlib_module_names or name in sys.builtin_module_names
