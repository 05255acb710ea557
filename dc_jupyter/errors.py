"""The package's small exception tree.

Standard types are used where one fits (``TypeError`` for bad arguments,
``NameError`` for undefined names, ``TimeoutError`` for timeouts); the classes
here cover the rest and also inherit the closest standard type, so
``except TypeError`` or ``except OSError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "DcJupyterError",
    "FrozenWorkerError",
    "MismatchedWorkerWarning",
    "SerializationError",
    "SchedulerUnreachableError",
    "VersionMismatchError",
    "WorkerCrashError",
]


class DcJupyterError(Exception):
    """Base class of every error raised by dc_jupyter itself."""


class SerializationError(DcJupyterError, TypeError):
    """A function, argument or captured value cannot be pickled; nothing was sent."""


class SchedulerUnreachableError(DcJupyterError, ConnectionError):
    """The Dask scheduler did not answer within the connect timeout."""


class VersionMismatchError(DcJupyterError, RuntimeError):
    """Client and cluster run different versions of a package that must match."""


class WorkerCrashError(DcJupyterError, RuntimeError):
    """A task kept killing the workers it ran on."""


class MismatchedWorkerWarning(UserWarning):
    """A worker joined with other versions than the notebook's; it gets no work."""


class FrozenWorkerError(DcJupyterError, TimeoutError):
    """The worker running the work stopped answering for longer than
    ``dc_jupyter.frozen-worker-timeout``; the work was cancelled."""
