"""Each dependency runs on its own backend, walked once by the core."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from conftest import wait_until

from dc_jupyter import compute_this
from dc_jupyter.backends.base import Backend, resolve_backend
from dc_jupyter.backends.local import LocalBackend


def _pid(_x=None):
    return os.getpid()


def test_a_dependency_runs_on_its_own_backend_not_its_parents():
    with ProcessPoolExecutor(1) as pool:
        where = compute_this(backend=pool)(_pid)
        echo = compute_this(backend="local")(lambda x: (x, os.getpid()))

        (dep_pid, echo_pid) = echo(where(1)).compute()
        assert echo_pid == os.getpid()  # the local backend: this process
        assert dep_pid != os.getpid()  # where: the pool's process, not echo's backend
        assert dep_pid == where(1).compute()

        # Nested in containers, and the other way round (a local dep of a pool job).
        pair = compute_this(backend=pool)(lambda a, b: (a, b[0], os.getpid()))
        a, b, own = pair(where(1), [compute_this(backend="local")(_pid)()]).compute()
        assert a == own != os.getpid() and b == os.getpid()


def test_a_dask_job_takes_a_dependency_from_a_process_pool(cluster):
    with ProcessPoolExecutor(1) as pool:
        where = compute_this(backend=pool)(_pid)
        on_dask = compute_this(address=cluster.address)(lambda x: (x, os.getpid()))
        dep_pid, dask_pid = on_dask(where(1)).compute()
        pool_pid = where(1).compute()
        assert dep_pid == pool_pid != os.getpid()
        assert dask_pid not in (pool_pid, os.getpid())
        # ... and a pool job a dependency from Dask.
        on_pool = compute_this(backend=pool)(lambda x: (x, os.getpid()))
        # (a lambda: sent by value; the workers cannot import this test module)
        on_cluster = compute_this(address=cluster.address)(lambda: os.getpid())
        from_dask, here = on_pool(on_cluster()).compute()
        assert here == pool_pid and from_dask not in (pool_pid, os.getpid())


class CountingBackend(LocalBackend):
    """A real backend that records what the core hands it (no mock: it runs the jobs)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, list]] = []

    def start(self, job, payload, inputs):
        self.started.append((job.name, list(inputs)))
        return super().start(job, payload, inputs)


def test_backends_get_each_job_once_with_its_dependencies_ready():
    backend = CountingBackend()

    @compute_this(backend=backend)
    def inc(x):
        return x + 1

    assert inc(inc(inc(0))).compute() == 3
    # One start per job, dependencies first, each handed over as result bytes.
    assert [name for name, _ in backend.started] == ["inc", "inc", "inc"]
    assert [len(inputs) for _, inputs in backend.started] == [0, 1, 1]
    assert all(isinstance(i, bytes) for _, inputs in backend.started for i in inputs)


def test_a_failed_dependency_fails_its_job_and_the_job_never_starts():
    backend = CountingBackend()

    @compute_this(backend=ThreadPoolExecutor(1))
    def boom():
        raise KeyError("from the dependency")

    @compute_this(backend=backend)
    def use(x):
        return x

    with pytest.raises(KeyError, match="from the dependency"):
        use(boom()).compute()
    assert backend.started == []


_GATE = threading.Event()
_STARTED = threading.Event()


def _slow():
    # Module-level (pickled by reference): a thread pool runs it in this process.
    _STARTED.set()
    _GATE.wait(10)
    return 1


def test_cancelling_a_job_waiting_for_another_backend_cancels_its_dependency():
    _GATE.clear()
    _STARTED.clear()
    with ThreadPoolExecutor(1) as pool:
        slow = compute_this(backend=pool)(_slow)
        queued = compute_this(backend=pool)(lambda: 2)
        backend = CountingBackend()
        use = compute_this(backend=backend)(lambda x: x)

        handle = use([slow(), queued()]).submit()
        assert _STARTED.wait(10)
        assert handle.status == "pending"
        assert handle.cancel()
        _GATE.set()
        assert wait_until(lambda: handle.done(), timeout=10)
        assert handle.status == "cancelled"
        assert backend.started == []  # never started: its dependencies were cancelled
        # The queued dependency was cancelled with it (the running one cannot be).
        assert handle._keep[1].status == "cancelled"


def test_the_registry_resolves_names_executors_and_backends():
    from dc_jupyter.backends import DaskBackend, ExecutorBackend

    class Opts:
        backend = None

    for spec, kind in [("dask", DaskBackend), ("local", LocalBackend)]:
        Opts.backend = spec
        assert type(resolve_backend(Opts)) is kind
    with ThreadPoolExecutor(1) as pool:
        Opts.backend = pool
        assert isinstance(resolve_backend(Opts), ExecutorBackend)
    mine = CountingBackend()
    Opts.backend = mine
    assert resolve_backend(Opts) is mine
    assert issubclass(CountingBackend, Backend)


def test_pool_dependencies_run_in_parallel_not_one_after_the_other():
    # Two 0.3 s dependencies on a two-process pool: started together, their
    # run times overlap (measured from inside the jobs, not a time bound).
    with ProcessPoolExecutor(2) as pool:

        @compute_this(backend=pool)
        def span():
            start = time.time()
            time.sleep(0.3)
            return start, time.time()

        both = compute_this(backend="local")(lambda a, b: (a, b))
        (a0, a1), (b0, b1) = both(span(), span()).compute()
        assert a0 < b1 and b0 < a1
