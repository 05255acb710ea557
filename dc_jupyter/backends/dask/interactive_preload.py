"""A Dask preload for the embedded cluster's scheduler and workers: send messages sooner.

Loaded by path (``dask scheduler --preload <this file>``, and the same for
workers) by ``embedded.EmbeddedCluster``, never imported by dc_jupyter itself:
standard library and distributed only. Dask batches the messages of each
connection and sends at most one batch per interval, fixed in its code:
scheduler to worker 5 ms, worker to scheduler 2 ms, scheduler to client 2 ms.
A job's round trip crosses each of them, and the second message on a
connection within its interval (a release, then the next task) waits for
the rest of it. ``DC_JUPYTER_BATCH_INTERVAL`` (seconds) replaces all three;
the trade is more, smaller messages under heavy load (more CPU per task).
"""

from __future__ import annotations

import asyncio
import os

from distributed.diagnostics.plugin import SchedulerPlugin


def _interval() -> float | None:
    try:
        value = float(os.environ.get("DC_JUPYTER_BATCH_INTERVAL", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


class _ShortIntervals(SchedulerPlugin):
    name = "dc_jupyter-batch-interval"

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def add_worker(self, scheduler, worker: str) -> None:
        comm = scheduler.stream_comms.get(worker)
        if comm is not None:
            comm.interval = self.interval

    def add_client(self, scheduler, client: str) -> None:
        # The client's stream is made after this hook runs: set it just after.
        def tune() -> None:
            comm = scheduler.client_comms.get(client)
            if comm is not None:
                comm.interval = self.interval

        asyncio.get_running_loop().call_soon(tune)


def dask_setup(server) -> None:
    """Dask's preload hook: ``server`` is the Scheduler or the Worker."""
    interval = _interval()
    if interval is None:
        return
    if hasattr(server, "stream_comms"):  # the scheduler
        server.add_plugin(_ShortIntervals(interval))
    elif getattr(server, "batched_stream", None) is not None:  # a worker
        server.batched_stream.interval = interval
