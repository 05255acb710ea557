"""dc_jupyter: run notebook functions and cells on a Dask cluster.

``@compute_this()`` makes a function's calls lazy jobs that run on Dask;
``%load_ext dc_jupyter`` adds the ``%%distribute`` cell magic.
"""

from __future__ import annotations

from . import config  # noqa: F401  (loads the shipped defaults into dask.config)
from .backends import Backend
from .connection import close, connect, current_client, start_local
from .decorator import JobOptions, RemoteFunction, compute_this
from .errors import (
    DcJupyterError,
    SchedulerUnreachableError,
    SerializationError,
    VersionMismatchError,
    WorkerCrashError,
)
from .handle import JobFuture
from .job import Job
from .mapping import MapFuture, MapJob, MapProgress

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "DcJupyterError",
    "Job",
    "JobFuture",
    "JobOptions",
    "MapFuture",
    "MapJob",
    "MapProgress",
    "RemoteFunction",
    "SchedulerUnreachableError",
    "SerializationError",
    "VersionMismatchError",
    "WorkerCrashError",
    "close",
    "compute_this",
    "connect",
    "current_client",
    "start_local",
]
