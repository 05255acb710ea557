"""dc_jupyter against its peers, side by side, in one run and one process tree.

    PYTHONPATH=. python benchmarks/bench.py [--quick] [--rounds N] [--extra] [--widgets-only] [--out DIR]

Starts, all on 127.0.0.1, with two one-thread workers each: dc_jupyter's
embedded default cluster; an external ``dask scheduler`` + ``dask worker``
cluster (``ProcessCluster``, Dask's default configuration) used by dc_jupyter
and by a bare ``distributed.Client``; and, when installed (``pip install
-e .[bench]``), ipyparallel and Ray; for scaling, external clusters of one and
of eight workers. Every measurement is the median of
several rounds, with the systems called in a shuffled order each round, so
load from other processes hits them all alike. Prints the ratio table of
issue 14 with its must/aim targets, and writes
``benchmarks/results/bench-<date>-<time>.json`` next to the earlier ones.
``--extra`` adds the large-argument and widget-traffic measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dc_jupyter
from dc_jupyter import compute_this
from dc_jupyter.tools.cluster import ProcessCluster

HOST = "127.0.0.1"
N_WORKERS = 2


def trivial(x):
    return x


def make_sleeper():
    def sleeper(i, seconds):
        import time

        time.sleep(seconds)
        return i

    return sleeper


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def wait_until_quiet(client: Any, timeout: float = 10.0) -> None:
    """Until the scheduler and every worker hold no task: a map's 320 tasks are
    forgotten ~80-100 ms after its results are back, and a map started meanwhile
    shares the cluster with that clean-up (measured: 50-70 ms slower on 8 workers)."""

    def scheduler_tasks(dask_scheduler=None) -> int:
        return len(dask_scheduler.tasks)

    def worker_tasks(dask_worker=None) -> int:
        return len(dask_worker.state.tasks)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.run_on_scheduler(scheduler_tasks) and not any(
            client.run(worker_tasks).values()
        ):
            return
        time.sleep(0.01)


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def shuffled_rounds(
    calls: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 3,
    settle: Callable[[], Any] | None = None,
) -> dict:
    """Time each call once per round, in a new random order every round; the medians.

    ``settle`` (untimed) runs before each call: e.g. wait until the cluster has
    forgotten the previous call's tasks, which it does after that call returns."""
    rng = random.Random(14)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(rounds + warmup):
        order = list(calls.items())
        rng.shuffle(order)
        for name, call in order:
            if settle is not None:
                settle()
            seconds = _timed(call)
            if i >= warmup:  # the first calls open connections and import on workers
                samples[name].append(seconds)
    return {
        name: {"median_s": _median(s), "min_s": min(s), "max_s": max(s), "n": len(s)}
        for name, s in samples.items()
    }


# -- the systems ---------------------------------------------------------------------


@contextlib.contextmanager
def ipyparallel_peer() -> Iterator[Any]:
    """Two ipyparallel engines on loopback, or None if ipyparallel is not installed."""
    try:
        import ipyparallel as ipp
    except ImportError:
        yield None
        return
    # engine_timeout: engines start slowly on a loaded machine (Dask's get 300 s too).
    cluster = ipp.Cluster(n=N_WORKERS, controller_ip=HOST, log_level=40, engine_timeout=300)
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(N_WORKERS, timeout=300)
    except Exception as exc:  # a peer that cannot start is left out, not the whole run
        print(f"ipyparallel did not start, left out: {type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            cluster.stop_cluster_sync()
        yield None
        return
    try:
        yield rc
    finally:
        with contextlib.suppress(Exception):
            rc.close()
        cluster.stop_cluster_sync()


@contextlib.contextmanager
def ray_peer() -> Iterator[Any]:
    """A Ray node with 2 CPUs on loopback, no dashboard; None if Ray is not installed."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
    try:
        import ray
    except ImportError:
        yield None
        return
    try:
        ray.init(
            num_cpus=N_WORKERS,
            include_dashboard=False,
            _node_ip_address=HOST,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:  # e.g. its node times out on a loaded machine: left out
        print(f"Ray did not start, left out: {type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            ray.shutdown()
        yield None
        return
    try:
        yield ray
    finally:
        ray.shutdown()


# -- the measurements ----------------------------------------------------------------


def one_call(emb: Any, ext_address: str, bare: Any, rc: Any, ray: Any, rounds: int) -> dict:
    """Latency of one trivial call on each system, rounds interleaved and shuffled."""
    ours_emb = compute_this(client=emb)(trivial)
    ours_ext = compute_this(address=ext_address)(trivial)
    calls = {
        "dc_jupyter embedded": lambda: ours_emb(1).compute(),
        "dc_jupyter external": lambda: ours_ext(1).compute(),
        "bare Dask external": lambda: bare.submit(trivial, 1, pure=False).result(),
    }
    if rc is not None:
        view = rc.load_balanced_view()
        calls["ipyparallel apply_sync"] = lambda: view.apply_sync(trivial, 1)
    if ray is not None:
        remote = ray.remote(trivial)
        calls["Ray get(f.remote())"] = lambda: ray.get(remote.remote(1))
    return shuffled_rounds(calls, rounds)


def many_jobs(ext_address: str, bare: Any, n: int, rounds: int) -> dict:
    """n independent jobs: compute(*jobs), a loop of .submit(), and bare Dask's ways."""
    ours = compute_this(address=ext_address)(trivial)

    def submit_loop() -> None:
        handles = [ours(i).submit() for i in range(n)]
        assert [h.result() for h in handles][-1] == n - 1

    def bare_submit_loop() -> None:
        futures = [bare.submit(trivial, i, pure=False) for i in range(n)]
        assert [f.result() for f in futures][-1] == n - 1

    calls = {
        "dc_jupyter.compute(*jobs)": lambda: dc_jupyter.compute(*[ours(i) for i in range(n)]),
        "client.gather(client.map)": lambda: bare.gather(bare.map(trivial, range(n), pure=False)),
        "dc_jupyter .submit() loop": submit_loop,
        "bare client.submit loop": bare_submit_loop,
    }
    return shuffled_rounds(calls, rounds, warmup=1)


def big_map(emb: Any, rc: Any, n: int, rounds: int) -> dict:
    """A map of n trivial items: dc_jupyter (embedded), ipyparallel chunked, the local limits."""
    import cloudpickle

    ours = compute_this(client=emb)(trivial)
    items = list(range(n))
    calls = {
        "dc_jupyter map": lambda: ours.map(items).compute(),
        "local map": lambda: list(map(trivial, items)),
        "cloudpickle round trip": lambda: cloudpickle.loads(cloudpickle.dumps(items)),
    }
    if rc is not None:
        view = rc.load_balanced_view()
        calls["ipyparallel map_sync(chunksize=1000)"] = lambda: view.map_sync(
            trivial, items, chunksize=1000
        )
    return shuffled_rounds(calls, rounds, warmup=1)


def scaling(n_workers: int, per_worker: int, rounds: int) -> dict:
    """Scaling efficiency as SPEC defines it: throughput on ``n_workers`` one-thread
    workers over ``n_workers`` times the throughput on one, each running
    ``per_worker`` 50 ms calls per worker (so both runs last ~2 s: each pays the
    same start and end once). Also bare Dask's ``client.map`` of the same calls
    on the same clusters, and the stricter figure against perfect (50 ms per call
    exactly, no start, no end: what the sleep itself overshoots counts as loss).
    And the ceiling on this machine: one bare Dask task per worker running its
    ``per_worker`` calls in a loop (no scheduling at all, no balance to keep).
    Each call starts on a quiet cluster (``wait_until_quiet``)."""
    from distributed import Client

    raw = make_sleeper()
    sleeper = compute_this(raw)

    def calls_in_a_loop(count: int) -> int:
        import time

        for _ in range(count):
            time.sleep(0.05)
        return count

    def one_task_per_worker(client: Any) -> None:
        workers = list(client.scheduler_info()["workers"])
        client.gather([client.submit(calls_in_a_loop, per_worker, workers=[w], pure=False)
                       for w in workers])  # fmt: skip

    result: dict[str, Any] = {"per_worker": per_worker, "workers": n_workers}
    for n in (1, n_workers):
        items = per_worker * n
        with ProcessCluster(n_workers=n) as cluster:
            try:
                dc_jupyter.connect(cluster.address)
                with Client(cluster.address, set_as_default=False) as bare:
                    calls = {
                        "dc_jupyter": lambda k=items: sleeper.map(range(k), [0.05] * k).compute(),
                        "bare Dask": lambda k=items, c=bare: c.gather(
                            c.map(raw, range(k), [0.05] * k, pure=False)
                        ),
                        "one task per worker": functools.partial(one_task_per_worker, bare),
                    }
                    result[f"{n} workers"] = shuffled_rounds(
                        calls, rounds, warmup=1, settle=functools.partial(wait_until_quiet, bare)
                    )
            finally:
                dc_jupyter.close()
    one, many = result["1 workers"], result[f"{n_workers} workers"]
    for name in ("dc_jupyter", "bare Dask", "one task per worker"):
        t1, tn = one[name]["median_s"], many[name]["median_s"]
        result[name] = {"efficiency": t1 / tn, "vs_perfect": per_worker * 0.05 / tn}
    result["efficiency"] = result["dc_jupyter"]["efficiency"]
    return result


def large_argument(address: str, megabytes: int, repeats: int) -> dict:
    """A large NumPy argument vs scatter + submit (``--extra``)."""
    import numpy as np
    from distributed import Client

    array = np.random.default_rng(0).random(megabytes * 1_000_000 // 8)

    def nbytes(a):
        return a.nbytes

    func = compute_this(address=address)(nbytes)
    with Client(address, set_as_default=False) as bare:

        def plain() -> None:
            data = bare.scatter(array, hash=False, direct=True)
            assert bare.submit(nbytes, data, pure=False).result() == array.nbytes

        return shuffled_rounds({"dc_jupyter": lambda: func(array).compute(), "scatter+submit": plain},
                               repeats, warmup=1)  # fmt: skip


def widget_updates(small: int, large: int) -> dict:
    """Widget updates sent for a small and a large map (``--extra``)."""
    from dc_jupyter.tools.widget_traffic import count_updates

    with ProcessCluster(n_workers=2) as cluster:
        try:
            dc_jupyter.connect(cluster.address)
            runs = {small: count_updates(small, delay=0.15), large: count_updates(large)}
        finally:
            dc_jupyter.close()
    return {str(n): {"updates": t.updates, "seconds": round(t.seconds, 3),
                     "updates_per_s": round(t.updates_per_second, 1)} for n, t in runs.items()}  # fmt: skip


# -- the table -----------------------------------------------------------------------

#: (metric, must, aim, "<=" or ">=") as in issue 14
TARGETS = [
    ("one call, embedded default / ipyparallel apply_sync", 1.0, 0.6, "<="),
    ("one call, external cluster / bare Dask on it", 0.8, 0.6, "<="),
    ("1,000 jobs, compute(*jobs) / client.gather(client.map)", 0.5, 0.2, "<="),
    ("single-.submit() loop / bare client.submit loop", 1.0, 0.8, "<="),
    ("map of 200,000 items, items/s / ipyparallel chunked", 3.0, 10.0, ">="),
    ("the same map's time / cloudpickle round trip", 10.0, 3.0, "<="),
    ("scaling efficiency 1 -> 8 workers, 50 ms functions", 0.97, 0.99, ">="),
]


def ratios(report: dict) -> dict[str, float | None]:
    call = report["one_call"]
    many = report["many_jobs"]
    big = report["map"]
    med = lambda d, k: d[k]["median_s"] if isinstance(d.get(k), dict) else None  # noqa: E731

    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    return dict(zip([t[0] for t in TARGETS], [
        div(med(call, "dc_jupyter embedded"), med(call, "ipyparallel apply_sync")),
        div(med(call, "dc_jupyter external"), med(call, "bare Dask external")),
        div(med(many, "dc_jupyter.compute(*jobs)"), med(many, "client.gather(client.map)")),
        div(med(many, "dc_jupyter .submit() loop"), med(many, "bare client.submit loop")),
        div(med(big, "ipyparallel map_sync(chunksize=1000)"), med(big, "dc_jupyter map")),
        div(med(big, "dc_jupyter map"), med(big, "cloudpickle round trip")),
        report["scaling"].get("efficiency"),
    ], strict=True))  # fmt: skip


def _meets(value: float | None, limit: float, sense: str) -> bool:
    return value is not None and (value <= limit if sense == "<=" else value >= limit)


def print_table(report: dict, previous: dict | None) -> None:
    print("\n| metric | this run | must | aim | holds | previous run |")
    print("| --- | --- | --- | --- | --- | --- |")
    before = (previous or {}).get("ratios", {})
    for (metric, must, aim, sense), value in zip(TARGETS, report["ratios"].values(), strict=True):
        holds = ("aim" if _meets(value, aim, sense) else "must" if _meets(value, must, sense)
                 else "NO" if value is not None else "-")  # fmt: skip
        shown = "-" if value is None else f"{value:.2f}"
        old = before.get(metric)
        print(f"| {metric} | {shown} | {sense} {must:g} | {sense} {aim:g} | {holds} | "
              f"{'-' if old is None else f'{old:.2f}'} |")  # fmt: skip
    print("\nmedians (ms):")
    for section in ("one_call", "many_jobs", "map"):
        for name, s in report[section].items():
            if not isinstance(s, dict):
                print(f"  {section:9} {name}: {s}")
                continue
            print(f"  {section:9} {name:40} {s['median_s'] * 1000:10.2f}  "
                  f"(min {s['min_s'] * 1000:.2f}, max {s['max_s'] * 1000:.2f}, n={s['n']})")  # fmt: skip
    sc = report["scaling"]
    if "error" in sc:
        print(f"  scaling   failed: {sc['error']}")
        return
    n, per = sc["workers"], sc["per_worker"]
    print(f"  scaling   {per} x 50 ms per worker (ideal {per * 0.05:.2f} s), medians:")
    for name in ("dc_jupyter", "bare Dask", "one task per worker"):
        if name not in sc:  # a result file from before the ceiling was measured
            continue
        t1, tn = sc["1 workers"][name]["median_s"], sc[f"{n} workers"][name]["median_s"]
        print(f"  scaling   {name:19} 1 worker {t1:.3f} s, {n} workers {tn:.3f} s: efficiency "
              f"{sc[name]['efficiency']:.3f} (against perfect {sc[name]['vs_perfect']:.3f})")  # fmt: skip


def _previous(out: Path) -> dict | None:
    for path in sorted(out.glob("bench-*.json"), reverse=True):
        with contextlib.suppress(ValueError, OSError):
            report = json.loads(path.read_text())
            if "ratios" in report:
                return report
    return None


def section(report: dict, name: str, measure: Callable[..., dict], *args: Any) -> None:
    """Run one measurement; a failure (e.g. a peer losing its scheduler on a loaded
    machine) is recorded and printed, and the run goes on."""
    print(f"{name} ...", flush=True)
    try:
        report[name] = measure(*args)
    except Exception as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name} failed: {report[name]['error']}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes")
    parser.add_argument("--rounds", type=int, help="rounds of the one-call measurement")
    parser.add_argument("--extra", action="store_true", help="also large arguments, widgets")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--widgets-only", action="store_true", help="only the widget counts")
    args = parser.parse_args()
    if args.widgets_only:
        print(json.dumps(widget_updates(10, 200_000), indent=2))
        return 0
    quick = args.quick
    call_rounds = args.rounds or (40 if quick else 200)
    n_jobs, n_items = (200, 20_000) if quick else (1000, 200_000)
    load = os.getloadavg()
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_at_start": load,
        },  # fmt: skip
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "sizes": {"call_rounds": call_rounds, "jobs": n_jobs, "map_items": n_items},
    }
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    from distributed import Client

    external = ProcessCluster(n_workers=N_WORKERS).start()
    try:
        emb = dc_jupyter.start_local(N_WORKERS)
        with (
            Client(external.address, set_as_default=False) as bare,
            ipyparallel_peer() as rc,
            ray_peer() as ray,
        ):
            rounds = 3 if quick else 5
            section(report, "one_call", one_call, emb, external.address, bare, rc, ray, call_rounds)
            section(report, "many_jobs", many_jobs, external.address, bare, n_jobs, rounds)
            section(report, "map", big_map, emb, rc, n_items, rounds)
            if args.extra:
                section(report, "large_argument", large_argument, external.address, 50, 3)
        dc_jupyter.close()
    finally:
        dc_jupyter.close()
        external.stop()
    section(report, "scaling", scaling, 8, 10 if quick else 40, 3 if quick else 5)
    if args.extra:
        report["widgets"] = widget_updates(10, n_items)
    report["ratios"] = ratios(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print_table(report, _previous(out))
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {path} (earlier results are kept next to it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
