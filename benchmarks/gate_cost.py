"""What the version gate costs: the same calls with it (the default) and without.

Every dc_jupyter task needs the gate's worker resource (see
``backends/dask/versions.py``); ``dc_jupyter.check-versions: false`` drops that
requirement. On a `dask scheduler` + two one-thread `dask worker` processes on
127.0.0.1, alternating gate on / off each round, it prints the medians of:
single ``.compute()`` round trips, and a loop of ``.submit()`` jobs then their
results (where Dask's queuing of large task groups, which skips tasks with
resource restrictions, could show).

    PYTHONPATH=. python benchmarks/gate_cost.py [--rounds 5] [--calls 50] [--jobs 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import dask

import dc_jupyter
from dc_jupyter import compute_this
from dc_jupyter.tools.cluster import ProcessCluster


def inc(x):
    return x + 1


def one_call(func, calls: int) -> float:
    times = []
    for i in range(calls):
        start = time.perf_counter()
        func(i).compute()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def submit_loop(func, jobs: int) -> float:
    start = time.perf_counter()
    handles = [func(i).submit() for i in range(jobs)]
    for handle in handles:
        handle.result()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    results: dict[bool, dict[str, list[float]]] = {
        gate: {"call": [], "loop": []} for gate in (True, False)
    }
    with ProcessCluster(n_workers=2) as cluster:
        dc_jupyter.connect(cluster.address)
        func = compute_this()(inc)
        func(0).compute()  # plugins installed, versions checked
        for _ in range(args.rounds):
            for gate in (True, False):
                with dask.config.set({"dc_jupyter.check-versions": gate}):
                    results[gate]["call"].append(one_call(func, args.calls))
                    results[gate]["loop"].append(submit_loop(func, args.jobs))
        dc_jupyter.close()
    for what, unit in (("call", "one .compute()"), ("loop", f"{args.jobs} .submit() + results")):
        on = statistics.median(results[True][what])
        off = statistics.median(results[False][what])
        print(
            f"{unit:>28}: gate {on * 1000:8.1f} ms, no gate {off * 1000:8.1f} ms, ratio {on / off:.2f}"
        )


if __name__ == "__main__":
    main()
