"""Runs on the Dask scheduler: the workers that stopped answering, and what they hold.

Sent with ``client.run_on_scheduler`` by value (the scheduler lacks
dc_jupyter, ``core.frozen`` registers this module with cloudpickle), so it
imports only the standard library and, inside, ``distributed``. The silence
is measured with the scheduler's own clock, so a notebook on another machine
with a skewed clock reads it right.
"""

from __future__ import annotations

import time


def silent_workers(dask_scheduler=None, floor_intervals: float = 2.0) -> dict:
    """``{"interval": s, "silent": {address: [seconds silent, [keys it runs]]}}``.

    ``interval`` is the workers' heartbeat interval; only workers holding tasks
    and silent for more than ``floor_intervals`` of them are listed, so the
    answer stays tiny while everything is healthy.
    """
    from distributed.scheduler import heartbeat_interval

    workers = dask_scheduler.workers
    interval = heartbeat_interval(len(workers))
    now = time.time()
    silent = {}
    for address, ws in list(workers.items()):
        quiet = now - ws.last_seen
        if quiet > floor_intervals * interval and ws.processing:
            silent[address] = [quiet, [str(ts.key) for ts in ws.processing]]
    return {"interval": interval, "silent": silent}
