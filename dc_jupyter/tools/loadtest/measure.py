"""Run one configuration in one mode: independent jobs, or one batched map.

``jobs``: one ``func(i).submit()`` (one Dask task) per call, all sent at once,
then each result fetched, as a user sending independent calls would.
``map``: one ``func.map(...)``, which batches items into few tasks.
Each call returns ``(index, worker address, seconds it worked)``, so the
allocation per worker is counted from what the workers report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dc_jupyter.tools.loadtest.monitor import Live, Monitor


def make_work(kind: str) -> Callable[[int, float], tuple[int, str, float]]:
    """The function under test: sleeps (or spins) ``seconds`` and says where it ran."""

    # Built inside a function so cloudpickle ships it by value: the workers
    # do not have dc_jupyter installed.
    def sleep_work(i: int, seconds: float) -> tuple[int, str, float]:
        import time

        start = time.perf_counter()
        time.sleep(seconds)
        try:
            from distributed import get_worker

            where = get_worker().address
        except (ImportError, ValueError):
            where = "local"
        return i, where, time.perf_counter() - start

    def cpu_work(i: int, seconds: float) -> tuple[int, str, float]:
        import time

        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            pass
        try:
            from distributed import get_worker

            where = get_worker().address
        except (ImportError, ValueError):
            where = "local"
        return i, where, time.perf_counter() - start

    if kind not in ("sleep", "cpu"):
        raise ValueError(f"work must be 'sleep' or 'cpu', not {kind!r}")
    return sleep_work if kind == "sleep" else cpu_work


class _Tally:
    """Calls and busy seconds per worker, from results as they arrive."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.busy: dict[str, float] = {}

    def add(self, result: tuple[int, str, float]) -> None:
        _, worker, busy = result
        with self.lock:
            self.calls[worker] = self.calls.get(worker, 0) + 1
            self.busy[worker] = self.busy.get(worker, 0.0) + busy

    def snapshot(self) -> dict[str, tuple[int, float]]:
        with self.lock:
            return {w: (n, self.busy.get(w, 0.0)) for w, n in self.calls.items()}


def run_jobs(job: Any, n: int, duration: float, live_args: dict, monitor: Monitor) -> tuple:
    """``n`` independent jobs; returns (results, wall seconds, tasks, live)."""
    tally = _Tally()
    finished = [0]
    lock = threading.Lock()

    def count(_handle: Any) -> None:
        with lock:
            finished[0] += 1

    live = Live(total=n, done=lambda: finished[0], per_worker=tally.snapshot, **live_args)
    with monitor.watch(live):
        start = time.perf_counter()
        handles = []
        for i in range(n):
            handle = job(i, duration).submit()
            handle.add_done_callback(count)
            handles.append(handle)
        results = []
        for handle in handles:
            result = handle.result()
            tally.add(result)
            results.append(result)
        wall = time.perf_counter() - start
    del handles  # releases every future: nothing stays on the scheduler
    return results, wall, n, live


def run_map(job: Any, n: int, duration: float, live_args: dict, monitor: Monitor) -> tuple:
    """One batched ``job.map``; returns (results, wall seconds, tasks, live)."""
    handle_box: list[Any] = []

    def done() -> int:
        return handle_box[0].progress().done if handle_box else 0

    def per_worker() -> dict[str, tuple[int, float]]:
        if not handle_box:
            return {}
        handle = handle_box[0]
        busy = handle.busy_seconds()
        return {w: (c, busy.get(w, 0.0)) for w, c in handle.progress().per_worker.items()}

    live = Live(total=n, done=done, per_worker=per_worker, **live_args)
    with monitor.watch(live):
        start = time.perf_counter()
        handle = job.map(range(n), [duration] * n).submit()
        handle_box.append(handle)
        results = handle.result()
        wall = time.perf_counter() - start
    return results, wall, handle.tasks_sent, live


MODES = {"jobs": run_jobs, "map": run_map}
