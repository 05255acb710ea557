"""Small results come back with the end of their task (``backends.dask.pushed``),
on real `dask scheduler` + `dask worker` processes: the value is right whichever
way it comes, only the client that sent a job hears its result, and the
scheduler keeps none of them."""

from __future__ import annotations

import dask
import numpy as np
from conftest import scheduler_task_count, wait_until
from distributed import Client

from dc_jupyter import compute_this
from dc_jupyter.backends.dask import pushed
from dc_jupyter.core.map import MapFuture


def _result_events(client) -> dict:
    events = client.get_events()
    return {t: e for t, e in events.items() if t.startswith(pushed.TOPIC_PREFIX) and e}


def test_small_results_arrive_with_the_end_of_their_task(cluster, client):
    @compute_this(address=cluster.address)
    def square(x):
        return x * x

    handle = square(7).submit()
    assert handle.result(timeout=30) == 49
    # It came with the task's end: the handle never asked the cluster for it.
    assert handle._arrival is not None and handle._arrival.blob is not None
    assert handle.status == "finished" and handle.done()
    assert [square(i).compute() for i in range(20)] == [i * i for i in range(20)]
    # Passed on and forgotten: nothing is left in the scheduler's event log.
    assert wait_until(lambda: not _result_events(client), timeout=10)


def test_large_results_and_push_switched_off_are_fetched(cluster, client):
    @compute_this(address=cluster.address)
    def zeros(n):
        return np.zeros(n)

    big = zeros(100_000).submit()  # 800 kB: over the 64 kB pushed
    assert big.result(timeout=30).shape == (100_000,)
    assert big._arrival.blob is None
    with dask.config.set({"dc_jupyter.push-results-below": 0}):
        small = zeros(3).submit()
        assert small.result(timeout=30).tolist() == [0.0, 0.0, 0.0]
        assert small._arrival is None
    del big, small
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=20)


def test_errors_dependencies_and_dropped_handles(cluster, client):
    @compute_this(address=cluster.address)
    def inverse(x):
        return 1 / x

    @compute_this(address=cluster.address)
    def plus_one(x):
        return x + 1

    # An error never pushes: it comes the usual way, with its traceback.
    failing = inverse(0).submit()
    try:
        failing.result(timeout=30)
    except ZeroDivisionError as exc:
        assert "1 / x" in "".join(__import__("traceback").format_tb(exc.__traceback__))
    else:
        raise AssertionError("no error")
    # A pushed result is still there for the work that depends on it.
    assert plus_one(inverse(4)).compute() == 1.25
    # Handles dropped before their results came: nothing breaks, nothing stays.
    for i in range(1, 30):
        inverse(i).submit()
    assert inverse(2).compute() == 0.5
    del failing
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=20)
    assert wait_until(lambda: not _result_events(client), timeout=10)


def test_only_the_client_that_sent_a_job_hears_its_result(cluster):
    heard = []
    with Client(cluster.address, set_as_default=False) as other:
        for topic in (pushed.TOPIC_PREFIX, pushed.TOPIC_PREFIX + other.id):
            other.subscribe_topic(topic, heard.append)

        @compute_this(address=cluster.address)
        def secret(x):
            return f"secret {x}"

        assert secret(1).compute() == "secret 1"
        assert secret(2).compute() == "secret 2"
        other.unsubscribe_topic(pushed.TOPIC_PREFIX)
    assert heard == []


def _count_gathers(monkeypatch, client) -> list:
    """Record each ``Client.gather`` the map's collector makes (a fetch from the
    cluster); the real method still runs."""
    calls: list = []
    real = type(client).gather

    def gather(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(client), "gather", gather)
    return calls


def test_the_batches_a_map_ends_on_come_with_their_end(cluster, client, monkeypatch):
    """The batch that empties a worker's queue pushes its result, whichever it is
    (the map's end waits for it); one with work queued behind it is fetched later
    (pushing would cost its worker ~2 ms before the next task)."""

    @compute_this(address=cluster.address)
    def slow_square(x):
        import time

        time.sleep(0.01)
        return x * x

    assert slow_square.map(range(4)).compute() == [0, 1, 4, 9]  # connect first
    ran: dict[int, tuple[str, float]] = {}  # batch -> (worker, when it ended)
    settle = MapFuture._settle

    def spy(self, batch, **kwargs):
        meta = kwargs.get("meta")
        if meta:
            ran[batch] = (meta["worker"], meta["started"] + meta["busy"])
        return settle(self, batch, **kwargs)

    monkeypatch.setattr(MapFuture, "_settle", spy)
    gathers = _count_gathers(monkeypatch, client)
    # 120 x 10 ms: the first wave holds all of it, three batches per worker.
    assert slow_square.map(range(120)).compute() == [i * i for i in range(120)]
    fetched = {int(f.key.rsplit("-", 1)[1]) for args in gathers for f in args[0]}
    by_worker: dict[str, list[tuple[float, int]]] = {}
    for batch, (worker, ended) in ran.items():
        by_worker.setdefault(worker, []).append((ended, batch))
    assert len(by_worker) == 2
    for runs in by_worker.values():
        runs.sort()
        assert len(runs) >= 2, runs
        assert runs[-1][1] not in fetched  # the map's end did not wait for a fetch
        assert runs[0][1] in fetched  # work was queued behind it: not pushed
    gathers.clear()
    with dask.config.set({"dc_jupyter.push-results-below": 0}):
        assert slow_square.map(range(6)).compute() == [i * i for i in range(6)]
    assert gathers  # switched off, they are fetched
    assert wait_until(lambda: not _result_events(client), timeout=10)


def test_kept_map_handles_leave_no_task_on_the_cluster(cluster, client):
    """A map that took its last results as they arrived hears of their end from
    Dask after it finished: that news must not keep their tasks on the cluster
    while the notebook holds the handle."""

    @compute_this(address=cluster.address)
    def slow_square(x):
        import time

        time.sleep(0.005)
        return x * x

    handles = [slow_square.map(range(30)).submit() for _ in range(5)]
    for handle in handles:
        assert handle.result(timeout=30) == [i * i for i in range(30)]
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=15)
    assert len(handles) == 5  # still held
