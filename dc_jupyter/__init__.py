"""dc_jupyter: run notebook functions and cells on a Dask cluster.

``@compute_this()`` makes a function's calls lazy jobs that run on Dask;
``%load_ext dc_jupyter`` adds the ``%%distribute`` cell magic.
"""

from __future__ import annotations

from dc_jupyter import config  # noqa: F401  (loads the shipped defaults into dask.config)
from dc_jupyter.backends import Backend
from dc_jupyter.backends.dask.connection import close, connect, current_client, start_local
from dc_jupyter.cell.futures import CellFuture, SweepFuture
from dc_jupyter.core import observe as _observe
from dc_jupyter.core.function import JobOptions, RemoteFunction, compute_this
from dc_jupyter.core.futures import JobFuture
from dc_jupyter.core.job import Job
from dc_jupyter.core.many import compute, submit
from dc_jupyter.core.map import MapFuture, MapJob, MapProgress
from dc_jupyter.errors import (
    DcJupyterError,
    FrozenWorkerError,
    MismatchedWorkerWarning,
    SchedulerUnreachableError,
    SerializationError,
    VersionMismatchError,
    WorkerCrashError,
)
from dc_jupyter.ui import display as _display

_observe.set_views(_display)  # the core shows waits and handles through this hook

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CellFuture",
    "DcJupyterError",
    "FrozenWorkerError",
    "Job",
    "JobFuture",
    "JobOptions",
    "MapFuture",
    "MapJob",
    "MapProgress",
    "MismatchedWorkerWarning",
    "RemoteFunction",
    "SchedulerUnreachableError",
    "SerializationError",
    "SweepFuture",
    "VersionMismatchError",
    "WorkerCrashError",
    "close",
    "compute",
    "compute_this",
    "connect",
    "current_client",
    "start_local",
    "submit",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext dc_jupyter``: add ``%%distribute``/``%distribute`` and ``compute_this``."""
    from dc_jupyter.cell.magic import (
        DistributeMagics,  # imported here so `import dc_jupyter` stays cheap
    )

    ipython.register_magics(DistributeMagics)
    ipython.push({"compute_this": compute_this})


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext dc_jupyter``: remove what ``load_ipython_extension`` added."""
    magics = ipython.magics_manager.magics
    magics["cell"].pop("distribute", None)
    magics["line"].pop("distribute", None)
    ipython.magics_manager.registry.pop("DistributeMagics", None)
    if ipython.user_ns.get("compute_this") is compute_this:
        ipython.drop_by_id({"compute_this": compute_this})
