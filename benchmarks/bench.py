"""dc_jupyter against bare Dask, side by side on one cluster, in one run.

    PYTHONPATH=. python benchmarks/bench.py [--quick] [--widgets-only] [--out benchmarks/results]

Starts its own ``dask scheduler`` and one-thread ``dask worker`` processes
(``ProcessCluster``), prints each measurement with its ratio and target, and
writes ``benchmarks/results/bench-<date>.json``. Speed is checked here, not in
the tests. ipyparallel is measured as a peer only if it is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dc_jupyter
from dc_jupyter import compute_this
from dc_jupyter.tools.cluster import ProcessCluster


def trivial(x):
    return x


def make_sleeper():
    def sleeper(i, seconds):
        import time

        time.sleep(seconds)
        return i

    return sleeper


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def round_trip(address: str, n: int) -> dict:
    """(1) one func(x).compute() vs client.submit(f, x, pure=False).result(), interleaved.

    The order of the three calls is shuffled in every round: Dask sends in
    periodic batches (client, scheduler and worker each hold messages a few ms),
    so a fixed order gives whichever call comes second a systematic advantage.
    """
    import random

    from distributed import Client

    client = dc_jupyter.connect(address)
    bare = Client(address, set_as_default=False)
    func = compute_this(trivial)
    ours, plain, plain_tuned = [], [], []
    rng = random.Random(0)
    for i in range(n + 10):
        calls = [
            (ours, lambda i=i: func(i).compute()),
            (plain, lambda i=i: bare.submit(trivial, i, pure=False).result()),
            (plain_tuned, lambda i=i: client.submit(trivial, i, pure=False).result()),
        ]
        rng.shuffle(calls)
        for samples, call in calls:
            start = time.perf_counter()
            call()
            if i >= 10:  # the first calls warm up connections and worker imports
                samples.append(time.perf_counter() - start)
    bare.close()
    return {
        "dc_jupyter_ms": _median_ms(ours),
        "bare_dask_ms": _median_ms(plain),
        "bare_dask_on_dc_jupyter_client_ms": _median_ms(plain_tuned),
        "ratio": statistics.median(ours) / statistics.median(plain),
        "target": "<= 1.10",
        "samples": n,
        "order": "shuffled every round",
    }


def map_throughput(address: str, n_items: int, n_client_map: int) -> dict:
    """(2) func.map of a trivial function vs client.map, in items per second."""
    from distributed import Client

    dc_jupyter.connect(address)
    func = compute_this(trivial)
    func.map(range(1000)).compute()  # warm up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        result = func.map(range(n_items)).compute()
        best = max(best, n_items / (time.perf_counter() - start))
        assert result[-1] == n_items - 1
    with Client(address, set_as_default=False) as bare:
        bare.gather(bare.map(trivial, range(100), pure=False))
        start = time.perf_counter()
        bare.gather(bare.map(trivial, range(n_client_map), pure=False))
        dask_rate = n_client_map / (time.perf_counter() - start)
    return {
        "dc_jupyter_items_per_s": best,
        "client_map_items_per_s": dask_rate,
        "ratio": best / dask_rate,
        "target": ">= 200 (ipyparallel map_sync chunksize=1000 reached ~490 here)",
        "items": n_items,
        "client_map_items": n_client_map,
    }


def ipyparallel_map(n_items: int, n_engines: int) -> dict | None:
    """Optional peer: ipyparallel's chunked map_sync, if ipyparallel is installed."""
    try:
        import ipyparallel as ipp
    except ImportError:
        return None
    with ipp.Cluster(n=n_engines, log_level=40) as rc:
        view = rc.load_balanced_view()
        view.map_sync(trivial, range(1000), chunksize=1000)
        start = time.perf_counter()
        view.map_sync(trivial, range(n_items), chunksize=1000)
        return {"items_per_s": n_items / (time.perf_counter() - start), "items": n_items}


def scaling(address_of: Callable[[int], str], counts: list[int], per_worker: int) -> dict:
    """(3) throughput of 50 ms functions at 1..8 workers; efficiency vs perfect scaling.

    The functions sleep: this 2-core machine cannot run 8 CPU-bound workers,
    and sleeping measures what dc_jupyter adds (dispatch, batching, balance).
    """
    sleeper = compute_this(make_sleeper())
    rates = {}
    for n in counts:
        dc_jupyter.connect(address_of(n))
        items = per_worker * n
        sleeper.map(range(n), [0.0] * n).compute()  # warm up
        start = time.perf_counter()
        sleeper.map(range(items), [0.05] * items).compute()
        rates[n] = items / (time.perf_counter() - start)
    base = rates[counts[0]] / counts[0]
    return {
        "items_per_s": rates,
        "efficiency": {n: rates[n] / (base * n) for n in counts},
        "efficiency_vs_ideal": {n: rates[n] / (n / 0.05) for n in counts},
        "target": ">= 0.90 at 8 workers",
        "items_per_worker": per_worker,
        "note": "50 ms sleeps: measures dispatch on a 2-core machine",
    }


def large_argument(address: str, megabytes: int, repeats: int) -> dict:
    """(4) a 200 MB NumPy argument vs scatter + submit."""
    import numpy as np
    from distributed import Client

    dc_jupyter.connect(address)
    array = np.random.default_rng(0).random(megabytes * 1_000_000 // 8)

    def nbytes(a):
        return a.nbytes

    func = compute_this(nbytes)
    ours, plain = [], []
    with Client(address, set_as_default=False) as bare:
        for _ in range(repeats):
            start = time.perf_counter()
            assert func(array).compute() == array.nbytes
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            data = bare.scatter(array, hash=False, direct=True)
            assert bare.submit(nbytes, data, pure=False).result() == array.nbytes
            plain.append(time.perf_counter() - start)
            del data
    return {
        "dc_jupyter_ms": _median_ms(ours),
        "scatter_submit_ms": _median_ms(plain),
        "ratio": statistics.median(ours) / statistics.median(plain),
        "target": "<= 1.2",
        "megabytes": megabytes,
    }


def widget_updates(small: int, large: int) -> dict:
    """(5) widget updates sent for a small and a large map, on a cluster of its own.

    ``widget_traffic.count_updates`` runs each map with a live ``MapView``
    whose comms count what they send. Target: updates per second about the
    same (<= ~60/s: ~10 refreshes of ~6 values), whatever the number of items.
    """
    from dc_jupyter.tools.widget_traffic import count_updates

    with ProcessCluster(n_workers=2) as cluster:
        try:
            dc_jupyter.connect(cluster.address)
            # A short map must last long enough to move: 0.15 s per item.
            runs = {small: count_updates(small, delay=0.15), large: count_updates(large)}
        finally:
            dc_jupyter.close()
    return {
        str(n): {
            "updates": t.updates,
            "bar_updates": t.bar_updates,
            "tasks": t.tasks,
            "seconds": round(t.seconds, 3),
            "updates_per_s": round(t.updates_per_second, 1),
        }
        for n, t in runs.items()
    }


def print_widget_updates(w: dict) -> None:
    for n, t in w.items():
        print(f"(5) widget updates, {int(n):,} items ({t['tasks']} tasks, {t['seconds']:.2f} s): "
              f"{t['updates']} updates, {t['updates_per_s']:.1f}/s "
              "(target: about the same per second for any number of items)",
              flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, smaller sizes")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--widgets-only", action="store_true", help="only (5), widget updates")
    args = parser.parse_args()
    if args.widgets_only:
        print_widget_updates(widget_updates(10, 200_000))
        return 0
    quick = args.quick
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },  # fmt: skip
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    counts = [1, 2, 4, 8]
    with ProcessCluster(n_workers=2) as cluster:
        try:
            report["round_trip"] = r = round_trip(cluster.address, 50 if quick else 300)
            print(f"(1) round trip: dc_jupyter {r['dc_jupyter_ms']:.2f} ms, bare Dask "
                  f"{r['bare_dask_ms']:.2f} ms (on dc_jupyter's tuned client "
                  f"{r['bare_dask_on_dc_jupyter_client_ms']:.2f} ms): {r['ratio']:.2f}x "
                  f"(target <= 1.10x)", flush=True)  # fmt: skip
            report["map"] = m = map_throughput(
                cluster.address, 20_000 if quick else 200_000, 500 if quick else 2000
            )
            print(f"(2) map: dc_jupyter {m['dc_jupyter_items_per_s']:,.0f} items/s, "
                  f"client.map {m['client_map_items_per_s']:,.0f} items/s: "
                  f"{m['ratio']:,.0f}x (target >= 200x)", flush=True)  # fmt: skip
            report["large_argument"] = a = large_argument(
                cluster.address, 20 if quick else 200, 3 if quick else 5
            )
            print(f"(4) {a['megabytes']} MB argument: dc_jupyter {a['dc_jupyter_ms']:.0f} ms, "
                  f"scatter+submit {a['scatter_submit_ms']:.0f} ms: {a['ratio']:.2f}x "
                  "(target <= 1.2x)", flush=True)  # fmt: skip
        finally:
            dc_jupyter.close()
    sc_clusters: dict[int, ProcessCluster] = {}
    try:
        per_worker = 10 if quick else 40

        def address_of(n: int) -> str:
            # A fresh cluster of exactly n workers for each count.
            dc_jupyter.close()  # before its cluster stops, so nothing tries to reconnect
            for other in list(sc_clusters):
                sc_clusters.pop(other).stop()
            sc_clusters[n] = ProcessCluster(n_workers=n).start()
            return sc_clusters[n].address

        report["scaling"] = s = scaling(address_of, counts, per_worker)
        eff = ", ".join(f"{n}: {s['efficiency'][n]:.0%}" for n in counts)
        print(f"(3) scaling, 50 ms functions (sleep), {per_worker} per worker: "
              f"efficiency {eff} (target >= 90% at 8)", flush=True)  # fmt: skip
    finally:
        dc_jupyter.close()
        for c in sc_clusters.values():
            c.stop()
    report["widgets"] = w = widget_updates(10, 200_000)
    print_widget_updates(w)
    peer = ipyparallel_map(20_000 if quick else 200_000, 2)
    report["ipyparallel"] = peer or "not installed"
    if peer:
        print(f"peer: ipyparallel map_sync(chunksize=1000) {peer['items_per_s']:,.0f} items/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
