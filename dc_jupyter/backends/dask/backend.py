"""The default backend: Dask distributed, on whatever cluster ``connection`` finds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from dc_jupyter import config
from dc_jupyter.backends.base import Backend, BatchChannel, Entry, Pending
from dc_jupyter.backends.dask import connection, install, modules, pushed, versions
from dc_jupyter.backends.dask.errors import translate_backend_error
from dc_jupyter.core import output
from dc_jupyter.core.futures import JobFuture
from dc_jupyter.remote import job as remote_job
from dc_jupyter.remote import plugins

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from dc_jupyter.core.function import JobOptions
    from dc_jupyter.core.job import Job


def scatter_threshold() -> int:
    """``dc_jupyter.scatter-threshold`` in bytes."""
    return config.in_bytes(config.get("scatter-threshold", "1 MB"))


def _scatter(client: Any, value: Any, key: str) -> Any:
    # Straight to a worker (direct=True): the data never passes the scheduler
    # and is not part of any graph, so Dask's large-graph warning stays quiet.
    return client.scatter({key: value}, direct=True)[key]


logger = logging.getLogger(__name__)

#: Cancelling never waits longer than this for the scheduler (it may be gone).
CANCEL_TIMEOUT = 5.0
#: ... and the caller (a timeout, Ctrl-C) waits at most this long for it; the
#: rest goes on in the background.
CANCEL_WAIT = 0.3
#: How long the background interrupt waits for workers (a frozen one never answers).
INTERRUPT_TIMEOUT = 60.0
#: How long a map waits for a worker to re-pickle a batch item by item.
SPLIT_TIMEOUT = 60.0


class DaskCanceller:
    """Cancels futures of one client and stops their running code on the workers.

    First the scheduler drops the tasks (so Dask does not retry them), then
    every worker gets ``remote_job.interrupt_tasks(keys)`` through ``client.run``,
    which raises an exception in the threads still running those keys.
    """

    def __init__(self, client: Any) -> None:
        self._client = weakref.ref(client)

    def __call__(self, handles: list[JobFuture]) -> None:
        self.cancel_futures([h._inner for h in handles], [h.key for h in handles if h.key])

    def cancel_futures(self, futures: list[Any], keys: list[str]) -> None:
        """Cancel Dask ``futures`` and interrupt ``keys`` wherever they are running."""
        client = self._client()
        if client is None:
            return
        if client.status != "running":
            # Disconnected: Dask already cancelled these futures locally, and
            # contacting the scheduler would only wait for the connect timeout.
            for future in futures:
                future.cancel()
            return
        # A frozen worker (SIGSTOP, a GIL-holding C call) never answers the
        # interrupt: wait at most CANCEL_WAIT so a timeout or Ctrl-C returns on
        # time, and let the cancelling go on in the background.
        pending = asyncio.run_coroutine_threadsafe(
            _cancel_and_interrupt(client, futures, keys), client.loop.asyncio_loop
        )
        if _on_loop(client):
            return  # on the event loop's own thread: waiting would block it
        with contextlib.suppress(concurrent.futures.TimeoutError):
            pending.result(timeout=CANCEL_WAIT)


def _on_loop(client: Any) -> bool:
    try:
        return asyncio.get_running_loop() is client.loop.asyncio_loop
    except RuntimeError:
        return False


async def _cancel_and_interrupt(client: Any, futures: list, keys: list[str]) -> None:
    try:
        await asyncio.wait_for(client._cancel(futures, force=True), CANCEL_TIMEOUT)
        if keys:
            # Uploaded already if any task of ours ran (no upload from inside the event loop).
            interrupt = install.local_module().interrupt_tasks
            await asyncio.wait_for(
                client._run(interrupt, keys, wait=True, on_error="ignore"), INTERRUPT_TIMEOUT
            )
    except Exception:  # in the background: nobody to raise to
        logger.info("dc_jupyter: cancelling on the cluster did not finish", exc_info=True)


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


#: The worker resource every dc_jupyter task takes under ``dc_jupyter.one-per-worker``.
SLOT_RESOURCE = "dc_jupyter"
#: client -> id of the scheduler whose workers got the slot resource
_slots_given: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def one_per_worker() -> bool:
    """``dc_jupyter.one-per-worker``: at most one dc_jupyter task at a time per worker."""
    return bool(config.get("one-per-worker", False))


def task_resources(client: Any, wanted: Mapping[str, float]) -> dict[str, float] | None:
    """The resources a task asks for: ``wanted``, the version gate's (see
    ``versions``), plus one slot under one-per-worker.

    The slot is given to every worker (and to workers that join later) by a
    worker plugin, registered once per cluster, so stock ``dask worker``
    processes need no ``--resources`` flag.
    """
    resources = dict(wanted)
    gate = versions.gate_resource()
    if gate is not None:  # only workers with the notebook's versions have it
        resources[gate] = 1
    if one_per_worker():
        identity = connection.identity(client)
        if _slots_given.get(client) != identity.get("id"):
            client.register_plugin(plugins.OneTaskPerWorker(SLOT_RESOURCE))
            _slots_given[client] = identity.get("id")
        resources[SLOT_RESOURCE] = 1
    return resources or None


def threads_warning(nthreads: Mapping[str, int]) -> str | None:
    """A warning when some worker runs more than one thread (and so functions at once)."""
    many = sorted(w for w, n in nthreads.items() if n > 1)
    if not many or one_per_worker():
        return None
    return (
        f"{len(many)} of {len(nthreads)} workers run more than one thread "
        f"(up to {max(nthreads[w] for w in many)}), so they run several functions at once. "
        "For one function at a time per worker, start them with `dask worker ... --nthreads 1`, "
        "or set dask config dc_jupyter.one-per-worker: true."
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
    Arguments larger than ``dc_jupyter.scatter-threshold`` are scattered to a
    worker first and passed the same way.
    """

    name = "dask"

    def __init__(
        self, options: JobOptions | None = None, workers: Sequence[str] | None = None
    ) -> None:
        self.options = options
        # Dask's workers= restriction: only these workers run this backend's tasks.
        self.workers = list(workers) if workers is not None else None

    def restrictions(self, client: Any, resources: Mapping[str, float]) -> dict[str, Any]:
        """Keyword arguments for ``client.submit``: resources and worker restrictions."""
        kwargs: dict[str, Any] = {"resources": task_resources(client, resources)}
        if self.workers is not None:
            kwargs.update(workers=self.workers, allow_other_workers=False)
        return kwargs

    def client(self) -> Any:
        opts = self.options
        if opts is None:
            return connection.current_client()
        return connection.current_client(
            client=opts.client, cluster=opts.cluster, address=opts.address
        )

    def check(self, options: Any, name: str) -> None:
        if options.resources:  # else work no worker can run would wait forever
            check_resources(self.client(), options.resources, name)

    def ensure_modules(self, names: set[str], what: str) -> None:
        modules.ensure(self.client(), names, what)

    def scatter_above(self) -> int | None:
        return scatter_threshold()

    def owns(self, handle: JobFuture) -> bool:
        return getattr(handle._inner, "client", None) is self.client()

    def start(self, job: Job, payload: bytes, inputs: list[Any]) -> JobFuture:
        client = self.client()
        opts = job.function.options
        threshold = scatter_threshold()
        args: list[Any] = []
        for value in inputs:
            if isinstance(value, JobFuture):  # ours: its result moves worker to worker
                args.append(value._inner)
            elif isinstance(value, remote_job.Scattered) or (
                isinstance(value, bytes) and len(value) > threshold
            ):  # a large argument, or a large result of a dependency on another backend
                args.append(_scatter(client, value, f"{job.name}-arg-{uuid.uuid4().hex}"))
            else:
                args.append(value)
        module = install.installed_on(client)
        listener = output.open_output(client, job.key)  # before the task can print
        arrival, push = pushed.expect(client, job.key)  # before it can finish
        try:
            future = client.submit(
                module.run_job,
                payload,
                *args,
                push=push,
                key=job.key,
                pure=False,
                retries=opts.retries or None,
                **self.restrictions(client, opts.resources),
            )
        except BaseException:
            listener.finish()
            raise
        handle = JobFuture(
            future,
            name=job.name,
            key=job.key,
            keep=(*inputs, *args),  # dependency handles (cancelled with it), scattered data
            canceller=canceller_for(client),
            translate=translate_backend_error,
            arrival=arrival,
        )
        handle.output = listener
        # Finished by whoever takes the result (JobFuture.result, cells), else when
        # the handle is dropped; not by a Dask done callback (seen to slow Ctrl-C).
        weakref.finalize(handle, listener.finish)
        return handle

    def batch_key(self) -> Any:
        # Every dask backend on the same client can share one graph.
        return ("dask", id(self.client()))

    def start_many(self, entries: list[Entry]) -> list[JobFuture]:
        """All jobs in one ``client.get`` graph (one message to the scheduler) per kind
        of restriction; dependencies inside it are named by key, so they run once."""
        client = self.client()
        run_job = install.installed_on(client).run_job
        threshold = scatter_threshold()
        handles: list[JobFuture] = []
        wave: list[tuple[Entry, tuple, list[Any]]] = []  # (entry, task, kept) of one graph
        wave_kwargs: dict[str, Any] | None = None
        in_wave: set[int] = set()

        def flush() -> None:
            if not wave:
                return
            graph = {entry.job.key: task for entry, task, _ in wave}
            # Before the tasks can print, as for a single job (see ``start``).
            listeners = [output.open_output(client, key) for key in graph]
            try:
                futures = client.get(graph, list(graph), sync=False, **(wave_kwargs or {}))
            except BaseException:
                for listener in listeners:
                    listener.finish()
                raise
            for (entry, _, kept), future, listener in zip(wave, futures, listeners, strict=True):
                handle = JobFuture(
                    future,
                    name=entry.job.name,
                    key=entry.job.key,
                    keep=tuple(kept),
                    canceller=canceller_for(client),
                    translate=translate_backend_error,
                )
                handle.output = listener
                weakref.finalize(handle, listener.finish)
                handles.append(handle)
            wave.clear()
            in_wave.clear()

        for i, entry in enumerate(entries):
            opts = entry.job.function.options
            kwargs = {
                "retries": opts.retries or None,
                **entry.backend.restrictions(client, opts.resources),
            }
            if kwargs != wave_kwargs:  # other restrictions: a graph of their own
                flush()
                wave_kwargs = kwargs
            args: list[Any] = []
            kept: list[Any] = []
            for value in entry.inputs:
                if isinstance(value, Pending) and value.index in in_wave:
                    args.append(entries[value.index].job.key)  # in this graph: by key
                    kept.append(value)
                    continue
                if isinstance(value, Pending):
                    value = handles[value.index]
                if isinstance(value, JobFuture):
                    args.append(value._inner)
                elif isinstance(value, remote_job.Scattered) or (
                    isinstance(value, bytes) and len(value) > threshold
                ):
                    value = _scatter(client, value, f"{entry.job.name}-arg-{uuid.uuid4().hex}")
                    args.append(value)
                else:
                    args.append(value)
                kept.append(value)
            wave.append((entry, (run_job, entry.payload, *args), kept))
            in_wave.add(i)
        flush()
        # Dependencies inside one graph: keep their handles too (created by now).
        for handle in handles:
            handle._keep = tuple(
                handles[k.index] if isinstance(k, Pending) else k for k in handle._keep
            )
        return handles

    def slots(self) -> int:
        nthreads = self.client().nthreads()
        if self.workers is not None:
            nthreads = {w: n for w, n in nthreads.items() if w in self.workers}
        if one_per_worker():
            return max(1, len(nthreads))
        return max(1, sum(nthreads.values()))

    def open_map(self, function_blob: bytes, options: Any, name: str = "map") -> BatchChannel:
        client = self.client()
        self.check(options, name)
        restrictions = self.restrictions(client, options.resources)
        channel = _DaskBatches(client, function_blob, options, scatter_threshold(), restrictions)
        # The map places its batches itself, unless the user chose the workers
        # (Dask then places them within that set).
        channel.pin = self.workers is None
        return channel


#: A map lists the cluster's workers again at least this often (seconds).
RELIST_SECONDS = 5.0


class _DaskBatches(BatchChannel):
    """One map's batches as Dask tasks; big blobs are scattered, not put in graphs.

    The function's blob rides inline with the first tasks while that is cheap;
    once it would have been sent more than ``threshold`` bytes in total it is
    scattered once, and every later task names that one piece of data, which
    each worker fetches once.
    """

    def __init__(
        self,
        client: Any,
        function_blob: bytes,
        options: Any,
        threshold: int,
        restrictions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(function_blob, options.retries)
        self.client = client
        self.options = options
        self.restrictions = restrictions or {"resources": dict(options.resources) or None}
        self.threshold = threshold
        self.function_ref: Any = function_blob
        self.inline_bytes = 0
        self.shared: list[Any] = []  # scattered futures, released on close()
        self.arrivals: dict[str, Any] = {}  # key -> pushed.Arrival, until gathered
        self.pin = False
        self._one_per_worker = one_per_worker()
        self._workers: dict[str, int] = {}
        self._workers_seen: Any = None  # the scheduler's worker count when last listed
        self._listed_at = 0.0

    @property
    def workers(self) -> dict[str, int]:  # type: ignore[override]
        """Worker -> threads (one each with ``one-per-worker``) the map may send
        batches to: those holding every resource its tasks need (the version
        gate's: a loose pin would let Dask run a task on a worker without it).
        Listed again when Dask's cached count of workers changes (the client
        refreshes it every 2 s) or every ``RELIST_SECONDS`` (a joining worker
        gets the gate's resource a moment after it joins)."""
        if not self.pin:
            return {}
        # Never a round trip to a scheduler that is gone (it could hang the map's
        # collector): with no cached identity (Dask empties it on disconnect) or a
        # failed listing, the last list stands, and Dask reroutes what is pinned.
        info = connection.identity(self.client, fetch=False)
        if not info or self.client.status != "running":
            return self._workers
        seen = (info.get("n_workers", len(info.get("workers", ()))), info.get("total_threads"))
        now = time.monotonic()
        if seen != self._workers_seen or now - self._listed_at > RELIST_SECONDS:
            try:
                listed = connection.scheduler_info(self.client)["workers"]
            except Exception:
                return self._workers
            needed = self.restrictions.get("resources") or {}
            self._workers = {
                address: 1 if self._one_per_worker else worker.get("nthreads", 1)
                for address, worker in listed.items()
                if all(worker.get("resources", {}).get(r, 0) >= n for r, n in needed.items())
            }
            self._workers_seen, self._listed_at = seen, now
        return self._workers

    def _function(self, key: str) -> Any:
        if isinstance(self.function_ref, bytes):
            self.inline_bytes += len(self.function_ref)
            if self.inline_bytes > self.threshold:
                self.function_ref = _scatter(self.client, self.function_blob, f"{key}-function")
                self.shared.append(self.function_ref)
        return self.function_ref

    def send(
        self,
        items_blob: bytes,
        key: str,
        budget: float | None = None,
        worker: str | None = None,
    ) -> Any:
        return self.send_many([(items_blob, key, budget, worker)])[0]

    def send_many(self, requests: list[tuple]) -> list[Any]:
        """Batches whose function and items ride inline go in one graph (one
        message, one wake-up of the client's event loop: ~1.5 ms of the
        notebook's time each otherwise, as long as the first tasks' start on 8
        workers); each is pinned to its worker by its own graph layer."""
        inline: list[tuple[str, tuple, dict[str, Any]]] = []  # (key, task, pin)
        futures: dict[str, Any] = {}
        for items_blob, key, budget, worker in requests:
            function = self._function(key)
            task = (self._call(key, budget), function, items_blob)
            pin = {} if worker is None else {"workers": [worker], "allow_other_workers": True}
            if isinstance(function, bytes) and len(items_blob) <= self.threshold:
                inline.append((key, task, pin))
                continue
            if len(items_blob) > self.threshold:
                task = (*task[:2], _scatter(self.client, items_blob, f"{key}-items"))
                self.shared.append(task[2])
            futures[key] = self._submit(*task, key=key, **pin)
        if len(inline) == 1:  # one batch: a plain submit is cheaper than a graph
            ((key, task, pin),) = inline
            futures[key] = self._submit(*task, key=key, **pin)
        elif inline:
            layers = {key: MaterializedLayer({key: task}, pin or None) for key, task, pin in inline}
            graph = HighLevelGraph(layers, {name: set() for name in layers})
            got = self.client.get(
                graph,
                list(layers),
                sync=False,
                retries=self.options.retries or None,
                **self.restrictions,
            )
            futures.update(zip(layers, got, strict=True))
        return [futures[key] for _, key, *_ in requests]

    def _submit(self, call: Any, function: Any, items: Any, **kwargs: Any) -> Any:
        retries = self.options.retries or None
        return self.client.submit(
            call, function, items, pure=False, retries=retries, **self.restrictions, **kwargs
        )

    def _call(self, key: str, budget: float | None) -> Any:
        """``run_batch`` with this batch's keyword arguments."""
        # Every batch may push its small result: which batch ends a worker's
        # queue (the ones the map's end waits for) is known only on the worker
        # when it ends (on 8 workers the map waited 20-40 ms for fetches of
        # batches planned early). The worker pushes only then, as the push costs
        # ~2 ms before its next task (``remote.job._tasks_waiting``).
        arrival, push = pushed.expect(self.client, key)
        if arrival is not None:
            self.arrivals[key] = arrival
        return functools.partial(
            install.installed_on(self.client).run_batch,
            item_retries=self.retries,
            budget=budget,
            single=self.single,
            push=push,
        )

    def failure(self, exc: Exception, name: str, future: Any) -> Exception | None:
        handle = _Described(name, getattr(future, "key", None), future)
        clearer = translate_backend_error(exc, handle)
        if clearer is None and self.lost_scheduler(future):
            # e.g. "RuntimeError: ConnectionPool is closed" from a client whose
            # scheduler went away: the same error as for a job.
            clearer = translate_backend_error(_ConnectionLost(), handle)
        if clearer is not None:
            clearer.dc_jupyter_crash = type(exc).__name__ == "KilledWorker"
        return clearer

    def lost_scheduler(self, future: Any) -> bool:
        cancelled = getattr(getattr(future, "_state", None), "exception", None)
        if getattr(cancelled, "reason", None) == "scheduler-connection-lost":
            return True
        return self.client.status not in ("running", "newly-created")

    def split(self, future: Any) -> bytes:
        """The batch result of ``future`` re-pickled item by item, on a worker."""
        split = self.client.submit(
            install.installed_on(self.client).split_batch,
            future,
            key=f"{future.key}-split",
            pure=False,
            resources=task_resources(self.client, {}),
        )
        try:
            return split.result(timeout=SPLIT_TIMEOUT)
        finally:
            split.release()

    fetch_together = True

    def when_arrived(self, future: Any, callback: Callable[[], Any]) -> None:
        # The pushed result comes a few ms ahead of Dask's "finished" (the
        # worker's and the scheduler's batched streams hold that one back).
        arrival = self.arrivals.get(future.key)
        if arrival is not None:
            arrival.when_set(callback)

    def gather(self, futures: list[Any]) -> dict[int, Any]:
        # Dask runs every done-callback on ONE thread: fetching there one batch at
        # a time left workers idle (~14 ms between tasks at 8 workers, vs ~1.4 ms
        # for client.map). One call for whatever has finished.
        found = {}
        for i, future in enumerate(futures):
            arrival = self.arrivals.get(future.key)
            if arrival is not None and arrival.blob is not None:
                found[i] = arrival.blob  # pushed: maybe before Dask says it finished
                self.arrivals.pop(future.key, None)
        finished = [i for i, f in enumerate(futures) if f.status == "finished"]
        for i in finished:
            self.arrivals.pop(futures[i].key, None)  # not pushed: it is fetched
        fetch = [i for i in finished if i not in found]
        if not fetch:
            return found
        try:
            blobs = self.client.gather([futures[i] for i in fetch])
        except Exception:  # e.g. a result lost with its worker: fetch one by one
            return found
        return {**found, **dict(zip(fetch, blobs, strict=True))}

    def cancel(self, futures: list[Any]) -> None:
        try:
            canceller_for(self.client).cancel_futures(futures, [f.key for f in futures])
        except Exception:  # the cluster may be gone: cancelling must not hang or raise
            logger.warning("dc_jupyter: could not cancel the map on the cluster", exc_info=True)

    def close(self) -> None:
        self.arrivals.clear()
        shared, self.shared = self.shared, []
        for future in shared:
            future.release()


class _Described:
    """What ``translate_backend_error`` needs to know of a map's batch."""

    def __init__(self, name: str, key: Any, future: Any) -> None:
        self.name, self.key, self._inner = name, key, future


class _ConnectionLost(Exception):
    reason = "scheduler-connection-lost"  # what translate_backend_error recognises
