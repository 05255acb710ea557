"""Backends: where jobs run. Importing this package registers the built-in ones."""

from __future__ import annotations

from concurrent.futures import Executor

from dc_jupyter.backends.base import (
    Backend,
    register_backend,
    register_backend_type,
    resolve_backend,
)
from dc_jupyter.backends.dask.backend import DaskBackend
from dc_jupyter.backends.executor import ExecutorBackend
from dc_jupyter.backends.local import LocalBackend

__all__ = ["Backend", "DaskBackend", "ExecutorBackend", "LocalBackend", "resolve_backend"]

register_backend("dask", DaskBackend)
register_backend("local", lambda options: LocalBackend())
register_backend_type(Executor, lambda executor, options: ExecutorBackend(executor))
