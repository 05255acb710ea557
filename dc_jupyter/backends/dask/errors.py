"""Turn Dask's own failure reports into errors that say what happened.

A bare ``KilledWorker`` trace or "cancelled for reason: scheduler-connection-lost"
tells a notebook user little; these become ``WorkerCrashError`` and
``SchedulerUnreachableError`` with the task's name and what to do. Exceptions
raised by the user's own code are never touched.
"""

from __future__ import annotations

from typing import Any

from dc_jupyter.errors import SchedulerUnreachableError, WorkerCrashError


def translate_backend_error(exc: BaseException, handle: Any) -> Exception | None:
    """A clearer exception for ``exc`` raised while waiting on ``handle``, or None."""
    kind = type(exc)
    if kind.__name__ == "KilledWorker" and kind.__module__.startswith("distributed"):
        tries = getattr(exc, "allowed_failures", None)
        workers = f"{tries + 1} workers" if isinstance(tries, int) else "several workers"
        return WorkerCrashError(
            f"{handle.name} kept killing the workers it ran on: {workers} died while running "
            f"it (task {handle.key!r}), so Dask gave up. The process died, e.g. out of memory, "
            "a segfault in C code, or os._exit(); run it with backend='local' or on a "
            "bigger worker to find out why. (Dask's distributed.scheduler.allowed-failures "
            "sets how many deaths are tolerated.)"
        )
    if getattr(exc, "reason", None) == "scheduler-connection-lost":
        address = _scheduler_address(handle)
        return SchedulerUnreachableError(
            f"Lost the connection to the Dask scheduler{address} while waiting for "
            f"{handle.name}; its work is lost. Run it again once the scheduler is back "
            "(dc_jupyter reconnects to the same address on the next call)."
        )
    return None


def _scheduler_address(handle: Any) -> str:
    client = getattr(handle._inner, "client", None)
    address = getattr(getattr(client, "scheduler", None), "address", None)
    return f" at {address}" if address else ""
