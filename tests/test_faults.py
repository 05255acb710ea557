"""Faults on real `dask scheduler` / `dask worker` processes: interrupts, timeouts,
dead workers, a dead scheduler, bad results, version mismatches, and a soak.

Every test here kills or blocks things, so it uses clusters of its own
(never the session ``cluster`` other tests share) and checks the cluster's
state afterwards: no task left on the scheduler, every worker free again.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
import tracemalloc

import cloudpickle
import dask
import pytest
from conftest import BLOCK_PRELOAD, HERE, process_cluster, scheduler_task_count, wait_until

import dc_jupyter
from dc_jupyter import (
    SchedulerUnreachableError,
    VersionMismatchError,
    WorkerCrashError,
    compute_this,
)
from dc_jupyter.tools.cluster import ProcessCluster

# Functions defined here must travel by value: workers cannot import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """Two one-thread workers (with nannies, which restart killed workers).

    ``allowed-failures=1``: Dask gives up on a task after it killed 2 workers
    (default 4), which keeps the crash test short.
    """
    with process_cluster(
        tmp_path_factory.mktemp("faulty"),
        n_workers=2,
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"},
    ) as c:
        yield c


@pytest.fixture(scope="module")
def fclient(faulty):
    from distributed import Client

    with Client(faulty.address, timeout="30s", set_as_default=False) as c:
        yield c


@pytest.fixture
def healthy(faulty, fclient):
    """Before: both workers up. After: nothing left on the scheduler."""
    fclient.wait_for_workers(2, timeout=60)
    yield
    # A raised exception's traceback forms a cycle with the handles in its frames
    # (which keep their futures): collect it, as the next cell's GC would.
    gc.collect()
    assert wait_until(lambda: scheduler_task_count(fclient) == 0, timeout=10), (
        "tasks left on the scheduler"
    )


# -- helpers -------------------------------------------------------------------------


def spin(i=0):
    """Pure Python that never ends by itself (only an interrupt stops it)."""
    while True:
        pass


def napping(i=0):
    """Sleeps in short naps: stoppable between them."""
    for _ in range(600):
        time.sleep(0.05)


def assert_every_worker_free(client, within: float = 2.0) -> None:
    """Each one-thread worker runs a new task within ``within`` seconds."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    assert len(workers) == 2
    futures = [
        client.submit(os.getpid, workers=[w], allow_other_workers=False, pure=False)
        for w in workers
    ]
    start = time.monotonic()
    for future in futures:
        future.result(timeout=within)
    del futures
    assert time.monotonic() - start < within


@contextlib.contextmanager
def ctrl_c_after(seconds: float):
    """Send this process a real SIGINT after ``seconds``, as Ctrl-C or a kernel interrupt does.

    Only while the block runs: a late signal is ignored instead of aborting pytest.
    """
    armed = threading.Event()
    armed.set()
    sent: list[float] = []

    def handler(signum, frame):
        if armed.is_set():
            raise KeyboardInterrupt

    def fire():
        if armed.is_set():
            sent.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    old = signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(seconds, fire)
    timer.start()
    try:
        yield sent
    finally:
        armed.clear()
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def kill_worker_process(cluster: ProcessCluster, client, address: str | None = None) -> int:
    """SIGKILL the worker process (not its nanny, which restarts it) of our own cluster."""
    pids = worker_pids(client)
    pid = pids[address or sorted(pids)[0]]
    with open(f"/proc/{pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    assert parent in {p.pid for p in cluster.workers}, "not a worker of our own cluster"
    os.kill(pid, signal.SIGKILL)
    return pid


# -- interrupts and timeouts ----------------------------------------------------------


@pytest.mark.parametrize("body", [spin, napping], ids=["busy-loop", "short-sleeps"])
def test_timeout_stops_running_code_and_frees_the_worker(faulty, fclient, healthy, body):
    job = compute_this(client=fclient)(body)()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 1 s.*cancelled"):
        job.compute(timeout=1)
    assert time.monotonic() - start < 3
    assert_every_worker_free(fclient)


def test_ctrl_c_during_compute_stops_wait_and_remote_code(faulty, fclient, healthy):
    job = compute_this(client=fclient)(spin)()
    with ctrl_c_after(1.0) as sent, pytest.raises(KeyboardInterrupt):
        job.compute()
    assert sent and time.monotonic() - sent[0] < 2, "the wait did not stop at once"
    assert_every_worker_free(fclient)


def test_ctrl_c_during_map_cancels_queued_and_running_items(faulty, fclient, healthy):
    mapped = compute_this(client=fclient)(spin).map(range(6))  # 2 run, 4 queue
    with ctrl_c_after(1.0) as sent, pytest.raises(KeyboardInterrupt):
        mapped.compute()
    assert sent and time.monotonic() - sent[0] < 2
    assert_every_worker_free(fclient)


def test_cancel_on_submitted_job_stops_running_code(faulty, fclient, healthy):
    fut = compute_this(client=fclient)(spin)().submit()
    assert wait_until(lambda: fclient.processing() and any(fclient.processing().values()), 10)
    time.sleep(0.3)  # let it start running on the worker
    assert fut.cancel() is True
    assert wait_until(lambda: fut.status == "cancelled", timeout=5)
    assert_every_worker_free(fclient)


def test_user_except_exception_does_not_swallow_the_interrupt(faulty, fclient, healthy):
    def stubborn():
        while True:
            try:
                while True:
                    pass
            except Exception:  # a careless user handler: must not keep the worker busy
                continue

    with pytest.raises(TimeoutError):
        compute_this(client=fclient)(stubborn)().compute(timeout=1)
    assert_every_worker_free(fclient)


# -- dead workers ---------------------------------------------------------------------


def test_worker_killed_mid_map_loses_nothing(faulty, fclient, healthy):
    @compute_this(client=fclient)
    def square_slowly(i):
        time.sleep(0.25)
        return i * i

    fut = square_slowly.map(range(16)).submit()
    assert wait_until(lambda: fut.counts()["finished"] >= 2, timeout=20)
    kill_worker_process(faulty, fclient)
    assert fut.result(timeout=60) == [i * i for i in range(16)]
    fclient.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_task_that_kills_every_worker_says_so(faulty, fclient, healthy):
    @compute_this(client=fclient)
    def crash():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashError, match="crash kept killing the workers it ran on") as info:
        crash().compute(timeout=120)
    assert isinstance(info.value, RuntimeError)
    assert "2 workers died" in str(info.value)
    del info
    fclient.wait_for_workers(2, timeout=60)
    assert compute_this(client=fclient)(lambda: "alive")().compute() == "alive"


# -- results that cannot travel -----------------------------------------------------------


def test_unpicklable_result_leaves_worker_healthy(faulty, fclient, healthy):
    pids = worker_pids(fclient)

    @compute_this(client=fclient)
    def make_lock(i):
        return threading.Lock()

    with pytest.raises(TypeError, match=r"result of make_lock\(\) is a _thread.lock"):
        make_lock.map(range(4)).compute(timeout=30)
    assert worker_pids(fclient) == pids  # no worker died or restarted
    assert_every_worker_free(fclient)
    assert compute_this(client=fclient)(lambda x: x + 1).map(range(4)).compute() == [1, 2, 3, 4]


# -- a dead scheduler ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_scheduler_is_a_clear_error_and_reconnects_when_back(tmp_path):
    port = _free_port()
    c = ProcessCluster(n_workers=0, worker_args=["--preload", BLOCK_PRELOAD], workdir=str(tmp_path))
    try:
        c.start_scheduler(port=port)
        c.add_worker()
        c.wait_for_workers(1)
        address = c.address
        with dask.config.set({"dc_jupyter.connect-timeout": "3s"}):
            dc_jupyter.connect(address)
            job = compute_this(napping)()

            killer = threading.Timer(1.0, lambda: c.scheduler.send_signal(signal.SIGKILL))
            killer.start()
            start = time.monotonic()
            with pytest.raises(SchedulerUnreachableError, match="Lost the connection") as info:
                job.compute(timeout=30)
            assert time.monotonic() - start < 10, "hung instead of failing"
            assert address in str(info.value)
            killer.join()
            c.scheduler.wait(timeout=10)

            # Still gone: the next call names the address within the connect timeout.
            start = time.monotonic()
            with pytest.raises(SchedulerUnreachableError, match=address):
                compute_this(lambda: 1)().compute()
            assert time.monotonic() - start < 10

            # Back at the same address (with a fresh worker): the next call just works.
            c.start_scheduler(port=port)
            assert c.address == address
            c.add_worker()
            c.wait_for_workers(1)
            assert compute_this(lambda: "back")().compute(timeout=30) == "back"
    finally:
        dc_jupyter.close()
        c.stop()


# -- version mismatch -----------------------------------------------------------------------


def test_version_mismatch_python_minor_and_cloudpickle(tmp_path):
    """Workers that REPORT another Python minor / cloudpickle (a preload fakes what the
    worker reports, see tests/fake_versions_preload.py) are refused before sending."""
    c = ProcessCluster(
        n_workers=0,
        worker_args=["--preload", str(HERE / "fake_versions_preload.py")],
        workdir=str(tmp_path),
    )
    try:
        c.start_scheduler()
        c.env["DC_JUPYTER_FAKE_VERSIONS"] = "python=3.10.14.final.0"
        c.add_worker(name="old-python")
        c.env["DC_JUPYTER_FAKE_VERSIONS"] = "cloudpickle=2.0.0"
        c.add_worker(name="old-cloudpickle")
        c.wait_for_workers(2)
        mine = f"{sys.version_info.major}.{sys.version_info.minor}"
        with pytest.raises(VersionMismatchError) as info:
            compute_this(address=c.address)(lambda: 1)().compute()
        message = str(info.value)
        assert f"python: notebook has {mine}" in message and "has 3.10.14" in message
        assert f"cloudpickle: notebook has {cloudpickle.__version__}" in message
        assert "has 2.0.0" in message and "nothing was sent" in message
        from distributed import Client
        from distributed.versions import VersionMismatchWarning

        with (
            pytest.warns(VersionMismatchWarning),
            Client(c.address, set_as_default=False) as probe,
        ):
            assert scheduler_task_count(probe) == 0
    finally:
        dc_jupyter.close()
        c.stop()


# -- soak ------------------------------------------------------------------------------------

SOAK_SECONDS = 30


@pytest.mark.soak
@pytest.mark.timeout(180)
def test_soak_four_threads_while_a_worker_dies_and_returns(faulty, fclient, healthy):
    """SOAK (~30 s): 4 threads submit jobs and maps nonstop; a worker is killed twice
    (its nanny restarts it). No result is lost or duplicated; client memory stays bounded."""
    from distributed import Client

    # Dask keeps its last 1000 low-level messages per connection for debugging
    # (~10 MB here); shrink that log so it cannot hide a leak of ours.
    with dask.config.set({"distributed.admin.low-level-log-length": 20}):
        client = Client(faulty.address, timeout="30s", set_as_default=False)

    @compute_this(client=client, retries=2)
    def tag(thread, i):
        return (thread, i)

    stop = threading.Event()
    results: dict[int, list] = {t: [] for t in range(4)}
    expected: dict[int, list] = {t: [] for t in range(4)}
    errors: list[BaseException] = []

    def loop(thread: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                if i % 5 == 4:
                    items = list(range(i, i + 8))
                    expected[thread].extend((thread, j) for j in items)
                    results[thread].extend(tag.map([thread] * 8, items).compute(timeout=60))
                    i += 8
                else:
                    expected[thread].append((thread, i))
                    results[thread].append(tag(thread, i).compute(timeout=60))
                    i += 1
        except BaseException as exc:
            errors.append(exc)

    tracemalloc.start()
    threads = [threading.Thread(target=loop, args=(t,), name=f"soak-{t}") for t in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(5)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        kills = 0
        for at in (10, 20):
            time.sleep(max(0.0, start + at - time.monotonic()))
            kill_worker_process(faulty, fclient)
            kills += 1
        time.sleep(max(0.0, start + SOAK_SECONDS - time.monotonic()))
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
        tracemalloc.stop()
    assert not errors, errors
    assert wait_until(lambda: not client.futures, timeout=10)  # no handle kept alive
    client.close()
    total = sum(len(r) for r in results.values())
    print(
        f"soak: {total} results in {time.monotonic() - start:.0f} s from 4 threads, "
        f"{kills} worker kills; traced client memory {baseline / 1e6:.1f} MB after 5 s, "
        f"{current / 1e6:.1f} MB at the end"
    )
    for t in range(4):
        assert results[t] == expected[t]  # each in order, none lost, none twice
    assert total > 200
    # Bounded: 10 MB for ~1,500+ jobs. Keeping each job's payload or result blob
    # (~10 kB with the task function) would exceed it; measured here: 1-2.5 MB
    # (Dask's own per-connection logs and caches fill up early on).
    assert current - baseline < 10e6, "client memory keeps growing"
