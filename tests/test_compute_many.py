"""``dc_jupyter.compute(*jobs)`` and ``dc_jupyter.submit(*jobs)`` on real Dask processes."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import pytest
from conftest import make_beating, scheduler_task_count, stopped_growing, wait_until

import dc_jupyter
from dc_jupyter import SerializationError, compute_this


def counted(path: str):
    """A function (sent by value) that appends a line to ``path`` each time it runs."""

    def count(x):
        with open(path, "a") as fh:
            fh.write(f"{x}\n")
        return x * 10

    return count


@contextlib.contextmanager
def ctrl_c_after(seconds: float):
    """A real SIGINT to the main thread after ``seconds``, as Ctrl-C sends (only in the block)."""
    armed = threading.Event()
    armed.set()

    def handler(signum, frame):
        if armed.is_set():
            raise KeyboardInterrupt

    def fire():
        if armed.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    old = signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(seconds, fire)
    timer.start()
    try:
        yield
    finally:
        armed.clear()
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)


def test_results_come_back_in_the_order_given(cluster):
    @compute_this(address=cluster.address)
    def add(a, b):
        return a + b

    jobs = [add(i, 100) for i in range(30)]
    assert dc_jupyter.compute(*jobs) == tuple(range(100, 130))
    assert dc_jupyter.compute() == ()
    one = add(1, 2)
    assert dc_jupyter.compute(one, add(one, 1), one) == (3, 4, 3)


def test_a_dependency_shared_by_several_jobs_runs_once(cluster, tmp_path):
    log = str(tmp_path / "runs")
    count = compute_this(address=cluster.address)(counted(log))

    @compute_this(address=cluster.address)
    def plus(a, b):
        return a + b

    shared = count(7)
    results = dc_jupyter.compute(plus(shared, 1), plus(shared, 2), plus([shared], [3]), shared)
    assert results == (71, 72, [70, 3], 70)
    with open(log) as fh:
        assert fh.read().split() == ["7"]  # once, although four jobs use it


def test_submit_returns_handles_in_order(cluster, client):
    @compute_this(address=cluster.address)
    def square(x):
        return x * x

    handles = dc_jupyter.submit(*[square(i) for i in range(5)])
    assert [h.result(timeout=60) for h in handles] == [0, 1, 4, 9, 16]
    assert all(h.status == "finished" for h in handles)


def test_jobs_with_other_options_and_backends_mix(cluster):
    @compute_this(address=cluster.address, retries=1)
    def remote(x):
        return ("remote", x)

    @compute_this(backend="local")
    def here(x):
        return ("here", x)

    local_dep = here(1)
    assert dc_jupyter.compute(remote(local_dep), here(2), remote(3)) == (
        ("remote", ("here", 1)),
        ("here", 2),
        ("remote", 3),
    )


def test_the_error_names_the_failing_job_and_the_others_are_cancelled(cluster, client, tmp_path):
    heartbeat = str(tmp_path / "heartbeat")
    slow = compute_this(address=cluster.address)(make_beating())

    @compute_this(address=cluster.address)
    def check(x, running):
        import os

        if x >= 0:  # done at once: with two workers, the slow sibling must get one
            return x
        for _ in range(400):  # fail only once the slow sibling runs
            if os.path.exists(running):
                break
            time.sleep(0.05)
        raise ValueError(f"negative: {x}")

    before = scheduler_task_count(client)
    with pytest.raises(ValueError, match="negative: -3") as info:
        dc_jupyter.compute(slow(heartbeat), check(1, heartbeat), check(-3, heartbeat))
    assert "job 2, check, of dc_jupyter.compute" in "".join(info.value.__notes__)
    assert os.path.getsize(heartbeat) > 0
    assert stopped_growing(heartbeat), "a sibling kept running after the error"
    assert wait_until(lambda: scheduler_task_count(client) <= before, timeout=10)


def test_ctrl_c_cancels_every_job_and_leaves_no_tasks(cluster, client, tmp_path):
    slow = compute_this(address=cluster.address)(make_beating())
    heartbeats = [str(tmp_path / f"beat{i}") for i in range(3)]
    before = scheduler_task_count(client)
    with ctrl_c_after(3), pytest.raises(KeyboardInterrupt):
        dc_jupyter.compute(*[slow(h) for h in heartbeats], timeout=60)
    assert any(os.path.exists(path) for path in heartbeats)  # they were running
    for path in heartbeats:
        assert stopped_growing(path), f"{path}: still running after Ctrl-C"
    assert wait_until(lambda: scheduler_task_count(client) <= before, timeout=10)


def test_timeout_cancels_every_job(cluster, client, tmp_path):
    heartbeat = str(tmp_path / "heartbeat")
    slow = compute_this(address=cluster.address)(make_beating())
    before = scheduler_task_count(client)
    with pytest.raises(TimeoutError, match="did not finish within 3 s"):
        dc_jupyter.compute(slow(heartbeat), timeout=3)
    assert os.path.getsize(heartbeat) > 0
    assert stopped_growing(heartbeat)
    assert wait_until(lambda: scheduler_task_count(client) <= before, timeout=10)


def test_bad_input_is_named_and_nothing_is_sent(cluster, client):
    @compute_this(address=cluster.address)
    def ident(x):
        return x

    before = scheduler_task_count(client)
    with pytest.raises(TypeError, match=r"argument 1 is a int"):
        dc_jupyter.compute(ident(1), 5)
    with pytest.raises(SerializationError, match="_thread.lock"):
        dc_jupyter.compute(ident(1), ident(ident(threading.Lock())))
    with pytest.raises(ValueError, match="timeout"):
        dc_jupyter.compute(ident(1), timeout=-1)
    assert scheduler_task_count(client) == before


def test_many_calls_of_one_function_go_as_a_map_and_name_the_failing_call(cluster, client):
    @compute_this(address=cluster.address)
    def check(x):
        if x == 13:
            raise ValueError("thirteen")
        return -x

    assert (
        dc_jupyter.compute(*[check(i) for i in range(12)] * 2) == tuple(-i for i in range(12)) * 2
    )
    before = scheduler_task_count(client)
    with pytest.raises(ValueError, match="thirteen") as info:
        dc_jupyter.compute(*[check(i) for i in range(40)])
    notes = "".join(info.value.__notes__)
    assert "item 13 of check.map" in notes and "item i is job i" in notes
    assert wait_until(lambda: scheduler_task_count(client) <= before, timeout=10)
