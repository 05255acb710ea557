"""func.map in batches, and large arguments scattered: on real `dask worker` processes."""

from __future__ import annotations

import os
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np
import pytest
from conftest import scheduler_task_count, wait_until

from dc_jupyter import SerializationError, compute_this


def test_many_tiny_items_are_batched_and_come_back_in_order(cluster):
    @compute_this(address=cluster.address)
    def inc(x):
        return x + 1

    handle = inc.map(range(20_000)).submit()
    assert handle.result(timeout=60) == list(range(1, 20_001))
    progress = handle.progress()
    assert (progress.total, progress.done, progress.failed) == (20_000, 20_000, 0)
    # Grouped: far fewer tasks than items (the first wave holds nearly all of
    # them); counted per item on each worker.
    assert handle.tasks_sent <= 12
    assert sum(progress.per_worker.values()) == 20_000
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in progress.per_worker)


def test_slow_items_are_not_grouped_and_spread_over_workers(cluster):
    @compute_this(address=cluster.address)
    def slow(i):
        time.sleep(0.6)  # over the 0.5 s of work a batch aims at
        return i, os.getpid()

    handle = slow.map(range(12)).submit()
    results = handle.result(timeout=60)
    assert [i for i, _ in results] == list(range(12))
    assert len({pid for _, pid in results}) == 2  # both workers took items
    assert handle.tasks_sent >= 10  # ~one item per task, not bundled


def test_generators_and_several_iterables_and_uneven_lengths(cluster):
    @compute_this(address=cluster.address)
    def combine(a, b, c):
        return f"{a}{b}{c}"

    letters = (ch for ch in "abcdef")  # a generator, consumed once
    result = combine.map(letters, range(4), ["x"] * 10).compute()
    assert result == list(map(lambda a, b, c: f"{a}{b}{c}", "abcdef", range(4), ["x"] * 10))
    assert combine.map([], [], []).compute() == []
    assert combine.map(iter(()), "ab", "cd").submit().done()


def test_failed_items_name_their_index_and_the_rest_are_kept(cluster, client):
    @compute_this(address=cluster.address)
    def inverse(x):
        return 1 / x

    items = [1, 2, 0, 4, 0, 5]
    with pytest.raises(ZeroDivisionError) as info:
        inverse.map(items).compute()
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "item 2 of inverse.map" in notes and "errors='return'" in notes
    # The remote traceback reaches the user's own line.
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(f.name == "inverse" and "1 / x" in (f.line or "") for f in frames)

    results = inverse.map(items).compute(errors="return")
    assert results[0] == 1.0 and results[1] == 0.5 and results[3] == 0.25 and results[5] == 0.2
    assert isinstance(results[2], ZeroDivisionError) and isinstance(results[4], ZeroDivisionError)

    handle = inverse.map(items).submit()
    with pytest.raises(ZeroDivisionError):
        handle.result(timeout=30)
    assert sorted(handle.exceptions()) == [2, 4]
    progress = handle.progress()
    assert (progress.done, progress.failed) == (4, 2)


def test_an_unpicklable_result_fails_only_its_item(cluster):
    import threading

    @compute_this(address=cluster.address)
    def maybe_lock(i):
        return threading.Lock() if i == 1 else i

    results = maybe_lock.map(range(3)).compute(errors="return")
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], TypeError) and "_thread.lock" in str(results[1])


def test_cancel_stops_a_map_and_leaves_nothing_on_the_cluster(cluster, client):
    @compute_this(address=cluster.address)
    def nap(i):
        time.sleep(0.2)
        return i

    before = scheduler_task_count(client)
    handle = nap.map(range(100)).submit()
    assert wait_until(lambda: handle.progress().done >= 2, timeout=20)
    assert handle.cancel()
    with pytest.raises(Exception):  # noqa: B017 - CancelledError, by whichever route
        handle.result(timeout=20)
    progress = handle.progress()
    assert progress.cancelled > 0 and progress.done < 100
    assert progress.done + progress.failed + progress.cancelled == 100
    assert handle.status == "cancelled"
    assert wait_until(lambda: scheduler_task_count(client) <= before, timeout=10)


def test_bad_items_are_named_before_anything_is_sent(cluster, client):
    import threading

    @compute_this(address=cluster.address)
    def one(x):
        return x

    before = scheduler_task_count(client)
    items = list(range(5000))
    items[3210] = threading.Lock()
    with pytest.raises(SerializationError, match=r"item 3210: argument 1 is a _thread.lock"):
        one.map(items).submit()
    assert scheduler_task_count(client) == before


@pytest.mark.parametrize("kind", ["local", "threads"])
def test_map_on_other_backends(kind):
    pool = ThreadPoolExecutor(2) if kind == "threads" else None
    backend = pool if pool is not None else "local"

    @compute_this(backend=backend)
    def half(x):
        return 10 // x

    try:
        assert half.map(range(1, 2001)).compute() == [10 // x for x in range(1, 2001)]
        results = half.map([1, 0, 5]).compute(errors="return")
        assert results[0] == 10 and results[2] == 2 and isinstance(results[1], ZeroDivisionError)
    finally:
        if pool is not None:
            pool.shutdown()


def test_large_arguments_are_scattered_without_the_large_graph_warning(cluster, client):
    @compute_this(address=cluster.address)
    def total(array, scale=1):
        return float(array.sum()) * scale

    big = np.ones(2_000_000)  # 16 MB, above the 1 MB default threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert total(big, scale=2).compute() == 4_000_000.0
        assert total(array=big).compute() == 2_000_000.0
        assert total.map([big, big[:10]], [1, 3]).compute() == [2_000_000.0, 30.0]
    messages = [str(w.message) for w in caught]
    assert not any("large graph" in m for m in messages), messages


def scattered_keys(client, marker: str) -> list[str]:
    """Keys with ``marker`` the scheduler holds: data sent by scatter, as a piece of its
    own, not inside a task."""
    return client.run_on_scheduler(
        lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks if marker in str(k)]
    )


def test_arguments_over_the_threshold_go_by_scatter_and_under_it_inside_the_task(cluster, client):
    @compute_this(address=cluster.address)
    def total(array):
        import time

        time.sleep(0.5)  # long enough to see a map's scattered items on the scheduler
        return float(array.sum())

    medium = np.ones(25_000)  # 200 kB
    with dask.config.set({"dc_jupyter.scatter-threshold": "100 kB"}):
        handle = total(medium).submit()  # the handle keeps its scattered argument
        assert handle.result(timeout=60) == 25_000.0
        assert scattered_keys(client, "total-arg-")
        del handle  # ... and releases it with the handle
        assert wait_until(lambda: not scattered_keys(client, "total-arg-"), timeout=30)
        items = total.map([medium, medium]).submit()
        assert wait_until(lambda: scattered_keys(client, "-items"), timeout=30)
        assert items.result(timeout=60) == [25_000.0, 25_000.0]
    with dask.config.set({"dc_jupyter.scatter-threshold": "1 MB"}):
        handle = total(medium).submit()  # 200 kB is under 1 MB: it rides inside the task
        assert handle.result(timeout=60) == 25_000.0
        assert scattered_keys(client, "total-arg-") == []


def test_retries_rerun_failed_map_items(cluster, tmp_path):
    markers = str(tmp_path)

    def first_try_fails(i):
        # Fails the first time it sees item i (a marker file per item), then works.
        import os

        marker = os.path.join(markers, f"{i}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError(f"first try of item {i}")
        return i * 10

    retried = compute_this(address=cluster.address, retries=1)(first_try_fails)
    assert retried.map(range(6)).compute() == [0, 10, 20, 30, 40, 50]
    assert sorted(os.listdir(markers)) == [str(i) for i in range(6)]

    for name in os.listdir(markers):
        os.unlink(os.path.join(markers, name))
    once = compute_this(address=cluster.address)(first_try_fails)
    results = once.map(range(3)).compute(errors="return")
    assert [type(r) for r in results] == [RuntimeError] * 3


def test_items_after_a_failing_one_in_the_same_batch_still_run(cluster):
    # Batches of hundreds of items: each failure sits in the middle of one, and
    # the worker must go on with the items after it (one bad item fails one item).
    @compute_this(address=cluster.address)
    def picky(i):
        if i % 500 == 7:
            raise ValueError(f"bad {i}")
        return i

    handle = picky.map(range(2000)).submit()
    results = handle.result(timeout=60, errors="return")
    bad = [i for i, r in enumerate(results) if isinstance(r, ValueError)]
    assert bad == [7, 507, 1007, 1507]
    assert str(results[507]) == "bad 507"
    assert [r for i, r in enumerate(results) if i not in bad] == [
        i for i in range(2000) if i not in bad
    ]
    assert handle.tasks_sent < 200  # batched, not one task per item


def test_async_functions_map_with_errors_per_item(cluster):
    @compute_this(address=cluster.address)
    async def later(i):
        import asyncio

        await asyncio.sleep(0)
        if i == 3:
            raise KeyError(i)
        return i * 2

    results = later.map(range(300)).compute(errors="return")
    assert isinstance(results[3], KeyError)
    assert [r for i, r in enumerate(results) if i != 3] == [i * 2 for i in range(300) if i != 3]


def test_a_batch_stops_at_its_time_budget_and_hands_back_the_rest(cluster):
    """The first batches hold many items, unmeasured; a slow function's batch stops
    within its time budget (twice batch-seconds), so its items spread over the
    workers instead of one worker running them all."""

    @compute_this(address=cluster.address)
    def slow(i):
        time.sleep(0.05)
        return i, os.getpid()

    with dask.config.set({"dc_jupyter.map.batch-seconds": 0.05}):  # budget 0.1 s
        handle = slow.map(range(30)).submit()
        results = handle.result(timeout=60)
    assert [i for i, _ in results] == list(range(30))
    assert len({pid for _, pid in results}) == 2
    # 30 items, at most ~2 per 0.1 s budget: many tasks, some sent again
    assert handle.tasks_sent >= 12
    progress = handle.progress()
    assert (progress.done, sum(progress.per_worker.values())) == (30, 30)


def test_budgets_in_process_and_errors_in_handed_back_items():
    @compute_this(backend="local")
    def maybe(i):
        time.sleep(0.01)
        if i % 7 == 3:
            raise ValueError(i)
        return i

    with dask.config.set({"dc_jupyter.map.batch-seconds": 0.01}):  # budget 0.02 s
        handle = maybe.map(range(40)).submit()
        results = handle.result(timeout=60, errors="return")
    assert handle.tasks_sent > 5
    for i, value in enumerate(results):
        if i % 7 == 3:
            assert isinstance(value, ValueError) and value.args == (i,)
        else:
            assert value == i


def test_a_worker_that_joins_during_a_map_gets_its_share(tmp_path):
    from conftest import process_cluster

    with process_cluster(tmp_path, n_workers=2) as proc_cluster:

        @compute_this(address=proc_cluster.address)
        def slow(i):
            time.sleep(0.25)
            return i

        handle = slow.map(range(120)).submit()  # 15 s of work on two workers
        proc_cluster.add_worker()
        proc_cluster.wait_for_workers(3, timeout=60)
        left = handle.total - handle.progress().done
        assert handle.result(timeout=120) == list(range(120))
        # The map sends each batch to a worker it names: it must learn of the
        # new one, which then takes about a third of what was left.
        per_worker = handle.progress().per_worker
        assert len(per_worker) == 3, per_worker
        assert min(per_worker.values()) >= left / 6, (left, per_worker)


def test_the_first_wave_gives_every_worker_as_many_items(tmp_path):
    from conftest import process_cluster

    with (
        process_cluster(tmp_path, n_workers=4) as proc_cluster,
        dask.config.set({"dc_jupyter.map.batch-seconds": 0.5}),  # budget 1 s: nothing handed back
    ):

        @compute_this(address=proc_cluster.address)
        def sleepy(i):
            time.sleep(0.05)
            return i

        sleepy.map(range(4)).compute()  # the workers have imported everything
        handle = sleepy.map(range(80)).submit()
        assert handle.result(timeout=120) == list(range(80))
        # All 80 items go out before any is measured, in 12 batches. Each took a
        # quarter of what was left (20, 15, 12, ...), and the workers got 15 to
        # 27 items each: the map took a third longer than it needed.
        per_worker = sorted(handle.progress().per_worker.values())
        assert len(per_worker) == 4 and per_worker[-1] - per_worker[0] <= 7, per_worker
