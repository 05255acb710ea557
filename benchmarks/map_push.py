"""What pushed results do for a map: the wait after its last batch, the gap between batches.

A map's batch pushes its small result with the news of its end when no task
waits behind it on its worker (``remote.job.run_batch``); ``dc_jupyter.
push-results-below: 0`` fetches every batch's result instead, as Dask does. On
an external ``dask scheduler`` + ``--workers`` one-thread ``dask worker``
processes (127.0.0.1), alternating the two in one process, each map starting on
a quiet cluster, it prints per setting the medians of: the map's time; the
wait from the last batch's end (measured on its worker) to the result in the
notebook; the gap between two batches on one worker.

    PYTHONPATH=. python benchmarks/map_push.py [--workers 8] [--rounds 6]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import dask
from distributed import Client

import dc_jupyter
from dc_jupyter import compute_this
from dc_jupyter.core import map as core_map
from dc_jupyter.tools.cluster import ProcessCluster

sys.path.insert(0, str(Path(__file__).parent))
from bench import wait_until_quiet  # noqa: E402

#: (worker, started, busy seconds) of every batch of the current map
_ran: list[tuple[str, float, float]] = []


def _record_batches() -> None:
    """Note where and when each batch ran (its ``meta``), as it settles."""
    settle = core_map.MapFuture._settle

    def spy(self, batch, **kwargs):
        meta = kwargs.get("meta")
        if meta:
            _ran.append((meta["worker"], meta["started"], meta["busy"]))
        return settle(self, batch, **kwargs)

    core_map.MapFuture._settle = spy


def sleeper(i, seconds):
    time.sleep(seconds)
    return i


def one_map(func, items: int, seconds: float) -> tuple[float, float, list[float]]:
    _ran.clear()
    start = time.time()
    func.map(range(items), [seconds] * items).compute()
    end = time.time()
    last_end = max(started + busy for _, started, busy in _ran)
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for worker, started, busy in _ran:
        by_worker.setdefault(worker, []).append((started, busy))
    gaps = []
    for runs in by_worker.values():
        runs.sort()
        gaps += [b[0] - (a[0] + a[1]) for a, b in itertools.pairwise(runs)]
    return end - start, end - last_end, gaps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-worker", type=int, default=40, help="50 ms items per worker")
    args = parser.parse_args()
    _record_batches()
    settings = {"pushed (64 kB)": "64 kB", "fetched (0)": 0}
    seen: dict[str, dict[str, list[float]]] = {
        name: {"map": [], "wait": [], "gap": []} for name in settings
    }
    with ProcessCluster(n_workers=args.workers) as cluster:
        try:
            dc_jupyter.connect(cluster.address)
            func = compute_this(sleeper)
            items = args.per_worker * args.workers
            func.map(range(args.workers), [0.0] * args.workers).compute()  # warm up
            with Client(cluster.address, set_as_default=False) as client:
                for _ in range(args.rounds):
                    for name, limit in settings.items():
                        wait_until_quiet(client)
                        with dask.config.set({"dc_jupyter.push-results-below": limit}):
                            took, wait, gaps = one_map(func, items, 0.05)
                        seen[name]["map"].append(took)
                        seen[name]["wait"].append(wait)
                        seen[name]["gap"].extend(gaps)
        finally:
            dc_jupyter.close()
    print(f"{args.workers} workers, {items} x 50 ms, {args.rounds} rounds (medians)")
    for name, got in seen.items():
        print(
            f"  {name:15s} map {statistics.median(got['map']):.3f} s   "
            f"after the last batch {statistics.median(got['wait']) * 1000:5.1f} ms   "
            f"between batches {statistics.median(got['gap']) * 1000:4.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
