"""Worker side of shipping local code: serve modules from source sent by the notebook.

The notebook sends the source of its own modules (a ``mylib.py`` next to the
notebook, a package of its own) in a Dask worker plugin, once per cluster and
version (``backends.dask.modules``). On each worker the plugin puts one
in-memory finder first on ``sys.meta_path``, so ``import mylib`` (in a cell,
inside a function body, or by cloudpickle resolving ``mylib.f``) finds the
notebook's version; nothing is written to disk. A new version replaces the old
one and drops the old modules from ``sys.modules``, so the next import runs
the new code.

Pickled by value (workers lack dc_jupyter): standard library only, plus
``distributed``'s plugin base class.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from distributed.diagnostics.plugin import WorkerPlugin

#: Attribute that marks the finder: the class arrives by value with every plugin,
#: so ``isinstance`` against an older copy would fail.
_MARK = "dc_jupyter_shipped_modules"


class _Loader(importlib.abc.InspectLoader):
    """Runs one shipped module from its source; ``inspect.getsource`` works too."""

    def __init__(self, path: str, source: bytes) -> None:
        self.path, self.source = path, source

    def get_source(self, fullname: str) -> str:
        return importlib.util.decode_source(self.source)

    def get_code(self, fullname: str):
        # The notebook's path as file name: remote tracebacks show its lines.
        return compile(self.source, self.path, "exec", dont_inherit=True)

    def exec_module(self, module) -> None:
        exec(self.get_code(module.__name__), module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds modules of the shipped units: ``{unit: {module name: (path, source, is_package)}}``."""

    def __init__(self) -> None:
        setattr(self, _MARK, True)
        self.units: dict = {}
        self.digests: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        entry = self.units.get(fullname.partition(".")[0], {}).get(fullname)
        if entry is None:
            return None
        file, source, is_package = entry
        spec = importlib.util.spec_from_loader(
            fullname, _Loader(file, source), origin=file, is_package=is_package
        )
        spec.has_location = True  # sets __file__ (the notebook's path)
        if is_package:
            spec.submodule_search_locations = []  # submodules come from this finder
        return spec

    def update(self, unit: str, modules: dict, digest: str) -> None:
        if self.digests.get(unit) == digest:
            return
        self.units[unit] = modules
        self.digests[unit] = digest
        # Old versions out: the next import (or unpickling ``mylib.f``) runs the new code.
        for name in [n for n in sys.modules if n == unit or n.startswith(unit + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()


def finder() -> _Finder:
    """The finder of this process, put first on ``sys.meta_path`` on first use."""
    for entry in sys.meta_path:
        if getattr(entry, _MARK, False):
            return entry
    entry = _Finder()
    # First: the notebook's version wins, as it does in the notebook (its
    # directory comes first on sys.path there).
    sys.meta_path.insert(0, entry)
    return entry


class ShipModules(WorkerPlugin):
    """Installs one unit (a module or a package) on every worker, also those that join later.

    Not idempotent: registering a new version under the same name replaces
    the old one on every worker.
    """

    def __init__(self, unit: str, modules: dict, digest: str) -> None:
        self.name = f"dc_jupyter-modules-{unit}"
        self.unit, self.modules, self.digest = unit, modules, digest

    def setup(self, worker=None) -> None:
        finder().update(self.unit, self.modules, self.digest)


def missing(names) -> list:
    """Which of the top-level module ``names`` this process cannot import."""
    lacking = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken package, sys.modules[name] = None
            found = False
        if not found:
            lacking.append(name)
    return lacking
