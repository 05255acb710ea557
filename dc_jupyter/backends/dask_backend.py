"""The default backend: Dask distributed, on whatever cluster ``connection`` finds."""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from .. import _worker, connection
from ..handle import JobFuture
from .base import Backend

if TYPE_CHECKING:
    from ..decorator import JobOptions
    from ..job import Job

logger = logging.getLogger(__name__)

_TASK = _worker.shippable_task()
_INTERRUPT = _worker.shippable_interrupter()
#: Cancelling never waits longer than this for the scheduler (it may be gone).
CANCEL_TIMEOUT = 5.0


class DaskCanceller:
    """Cancels futures of one client and stops their running code on the workers.

    First the scheduler drops the tasks (so Dask does not retry them), then
    every worker gets ``_worker.interrupt_tasks(keys)`` through ``client.run``,
    which raises an exception in the threads still running those keys.
    """

    def __init__(self, client: Any) -> None:
        self._client = weakref.ref(client)

    def __call__(self, handles: list[JobFuture]) -> None:
        client = self._client()
        if client is None:
            return
        futures = [h._inner for h in handles]
        keys = [h.key for h in handles if h.key is not None]
        if client.status != "running":
            # Disconnected: Dask already cancelled these futures locally, and
            # contacting the scheduler would only wait for the connect timeout.
            for future in futures:
                future.cancel()
            return
        client.sync(_cancel_and_interrupt, client, futures, keys, callback_timeout=CANCEL_TIMEOUT)


async def _cancel_and_interrupt(client: Any, futures: list, keys: list[str]) -> None:
    await client._cancel(futures, force=True)
    if keys:
        await client._run(_INTERRUPT, keys, wait=True, on_error="ignore")


#: client -> (time.monotonic(), {resource: largest amount one worker has}, n_workers)
_resource_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RESOURCE_CACHE_SECONDS = 5.0


def check_resources(client: Any, wanted: Any, name: str) -> None:
    """Refuse a task no worker of the cluster could ever run (it would queue forever)."""
    cached = _resource_cache.get(client)
    if cached is None or time.monotonic() - cached[0] > _RESOURCE_CACHE_SECONDS:
        info = connection.scheduler_info(client)
        offered: dict[str, float] = {}
        for worker in info.get("workers", {}).values():
            for resource, amount in (worker.get("resources") or {}).items():
                offered[resource] = max(offered.get(resource, 0), amount)
        cached = _resource_cache[client] = (time.monotonic(), offered, len(info["workers"]))
    _, offered, n_workers = cached
    if not n_workers:
        return  # no workers yet (e.g. an adaptive cluster scaling up): let Dask queue it
    missing = {r: a for r, a in wanted.items() if offered.get(r, 0) < a}
    if missing:
        have = ", ".join(f"{r}={a:g}" for r, a in sorted(offered.items())) or "none"
        raise ValueError(
            f"{name} needs resources {missing!r}, but no worker of the cluster at "
            f"{client.scheduler.address} has that much (workers offer: {have}), so it would "
            "wait forever; nothing was sent. Start workers with e.g. "
            "`dask worker ... --resources GPU=1`, or change resources=."
        )


_cancellers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def canceller_for(client: Any) -> DaskCanceller:
    """One canceller per client, so a map's handles are cancelled in one request."""
    canceller = _cancellers.get(client)
    if canceller is None:
        canceller = _cancellers[client] = DaskCanceller(client)
    return canceller


class DaskBackend(Backend):
    """Submits ``run_job(payload, *dependency_futures)`` with a readable key.

    Dependencies are submitted first and passed as Dask futures, so their
    results move from worker to worker and never through the notebook.
    """

    name = "dask"

    def __init__(self, options: JobOptions | None = None) -> None:
        self.options = options

    def client(self) -> Any:
        opts = self.options
        if opts is None:
            return connection.current_client()
        return connection.current_client(
            client=opts.client, cluster=opts.cluster, address=opts.address
        )

    def submit_prepared(self, job: Job, payload: bytes, deps: list[Job]) -> JobFuture:
        client = self.client()
        opts = job.function.options
        if opts.resources:
            check_resources(client, opts.resources, job.name)
        dep_handles = [self.submit(dep) for dep in deps]
        future = client.submit(
            _TASK,
            payload,
            *[h._inner for h in dep_handles],
            key=job.key,
            pure=False,
            retries=opts.retries or None,
            resources=dict(opts.resources) or None,
        )
        return JobFuture(
            future,
            name=job.name,
            key=job.key,
            keep=tuple(dep_handles),
            canceller=canceller_for(client),
        )

    def describe(self) -> str:
        return f"dask {self.client().scheduler.address}"
