"""Backends: where jobs run. ``resolve_backend`` turns an option into one."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from dc_jupyter import config
from dc_jupyter.backends.base import Backend
from dc_jupyter.backends.dask.backend import DaskBackend
from dc_jupyter.backends.executor import ExecutorBackend
from dc_jupyter.backends.local import LocalBackend

__all__ = ["Backend", "DaskBackend", "ExecutorBackend", "LocalBackend", "resolve_backend"]

_BY_NAME = {"dask": DaskBackend, "local": LocalBackend}


def resolve_backend(options: Any) -> Backend:
    """A backend from ``options.backend``: a name, an ``Executor`` or a ``Backend``."""
    spec = options.backend if options.backend is not None else config.get("backend", "dask")
    if isinstance(spec, Backend):
        return spec
    if isinstance(spec, Executor):
        return ExecutorBackend(spec)
    if spec == "dask":
        return DaskBackend(options)
    if spec == "local":
        return LocalBackend()
    raise ValueError(
        f"Unknown backend {spec!r}: use 'dask', 'local', a concurrent.futures.Executor "
        "(e.g. ProcessPoolExecutor()) or a dc_jupyter.backends.Backend instance."
    )
