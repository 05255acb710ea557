"""The default backend: Dask distributed, on whatever cluster ``connection`` finds."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from .. import _worker, config, connection
from ..handle import JobFuture
from .base import Backend, BatchChannel

if TYPE_CHECKING:
    from ..decorator import JobOptions
    from ..job import Job


class _Prepickled:
    """A task function pickled once, here, instead of by Dask at every submit.

    Dask would cloudpickle the function (with the worker module's code, by
    value) for every task: ~0.7 ms per submit, and ~0.15 ms or more to rebuild
    it on the worker. This pickles to ``_worker.load_cached(digest, blob)``,
    which each worker process unpickles once and then takes from its cache.
    """

    def __init__(self, func: Any) -> None:
        import hashlib

        import cloudpickle

        self.func = func
        self.blob = cloudpickle.dumps(func, protocol=_worker.PICKLE_PROTOCOL)
        self.digest = hashlib.sha1(self.blob).hexdigest()
        self.__name__ = func.__name__

    def __call__(self, *args: Any) -> Any:
        return self.func(*args)

    def __reduce__(self) -> tuple:
        return (_LOADER, (self.digest, self.blob))


class _ByBlob:
    """Pickles as ``pickle.loads(blob)``: plain pickle can then handle it."""

    def __init__(self, func: Any) -> None:
        import cloudpickle

        self.func = func
        self.blob = cloudpickle.dumps(func, protocol=_worker.PICKLE_PROTOCOL)

    def __call__(self, *args: Any) -> Any:
        return self.func(*args)

    def __reduce__(self) -> tuple:
        import pickle

        return (pickle.loads, (self.blob,))


_LOADER = _ByBlob(_worker.load_cached)
_TASK = _Prepickled(_worker.shippable_task())
_BATCH_TASK = _Prepickled(_worker.shippable_batch_task())


def scatter_threshold() -> int:
    """``dc_jupyter.scatter-threshold`` in bytes."""
    from dask.utils import parse_bytes

    value = config.get("scatter-threshold", "1 MB")
    return parse_bytes(value) if isinstance(value, str) else int(value)


def _scatter(client: Any, value: Any, key: str) -> Any:
    # Straight to a worker (direct=True): the data never passes the scheduler
    # and is not part of any graph, so Dask's large-graph warning stays quiet.
    return client.scatter({key: value}, direct=True)[key]


class DaskBackend(Backend):
    """Submits ``run_job(payload, *dependency_futures)`` with a readable key.

    Dependencies are submitted first and passed as Dask futures, so their
    results move from worker to worker and never through the notebook.
    Arguments larger than ``dc_jupyter.scatter-threshold`` are scattered to a
    worker first and passed the same way.
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

    def submit(self, job: Job) -> JobFuture:
        payload, deps = job.prepare(scatter_above=scatter_threshold())
        return self.submit_prepared(job, payload, deps)

    def submit_prepared(self, job: Job, payload: bytes, deps: list[Any]) -> JobFuture:
        client = self.client()
        dep_handles: list[Any] = []
        for dep in deps:
            if isinstance(dep, _worker.Scattered):
                dep_handles.append(_scatter(client, dep, f"{job.name}-arg-{uuid.uuid4().hex}"))
            else:
                dep_handles.append(self.submit(dep))
        opts = job.function.options
        future = client.submit(
            _TASK,
            payload,
            *[getattr(h, "_inner", h) for h in dep_handles],
            key=job.key,
            pure=False,
            retries=opts.retries or None,
            resources=dict(opts.resources) or None,
        )
        return JobFuture(future, name=job.name, key=job.key, keep=tuple(dep_handles))

    def describe(self) -> str:
        return f"dask {self.client().scheduler.address}"

    def slots(self) -> int:
        return max(1, sum(self.client().nthreads().values()))

    def open_map(self, function_blob: bytes, options: Any) -> BatchChannel:
        return _DaskBatches(self.client(), function_blob, options, scatter_threshold())


class _DaskBatches(BatchChannel):
    """One map's batches as Dask tasks; big blobs are scattered, not put in graphs.

    The function's blob rides inline with the first tasks while that is cheap;
    once it would have been sent more than ``threshold`` bytes in total it is
    scattered once, and every later task names that one piece of data, which
    each worker fetches once.
    """

    def __init__(self, client: Any, function_blob: bytes, options: Any, threshold: int) -> None:
        super().__init__(function_blob)
        self.client = client
        self.options = options
        self.threshold = threshold
        self.function_ref: Any = function_blob
        self.inline_bytes = 0
        self.shared: list[Any] = []  # scattered futures, released on close()

    def _function(self, key: str) -> Any:
        if isinstance(self.function_ref, bytes):
            self.inline_bytes += len(self.function_ref)
            if self.inline_bytes > self.threshold:
                self.function_ref = _scatter(self.client, self.function_blob, f"{key}-function")
                self.shared.append(self.function_ref)
        return self.function_ref

    def send(self, items_blob: bytes, key: str) -> Any:
        function = self._function(key)
        items: Any = items_blob
        if len(items_blob) > self.threshold:
            items = _scatter(self.client, items_blob, f"{key}-items")
            self.shared.append(items)
        opts = self.options
        return self.client.submit(
            _BATCH_TASK,
            function,
            items,
            key=key,
            pure=False,
            retries=opts.retries or None,
            resources=dict(opts.resources) or None,
        )

    def close(self) -> None:
        shared, self.shared = self.shared, []
        for future in shared:
            future.release()
