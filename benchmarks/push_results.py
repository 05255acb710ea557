"""What pushed results save: single calls with ``push-results-below`` on and off.

A job's small result comes back with the news that its task finished (see
``backends/dask/pushed.py``); ``dc_jupyter.push-results-below: 0`` fetches it
after, as Dask does. On dc_jupyter's embedded cluster and on an external
``dask scheduler`` + two one-thread ``dask worker`` processes (127.0.0.1), with
bare Dask's ``submit().result()`` on the external one for reference, each round
calling every variant once in a shuffled order, it prints the median latency
of each and the external ratios.

    PYTHONPATH=. python benchmarks/push_results.py [--rounds 150]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import dask
from distributed import Client

import dc_jupyter
from dc_jupyter import compute_this
from dc_jupyter.tools.cluster import ProcessCluster


def trivial(x):
    return x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    external = ProcessCluster(n_workers=2).start()
    try:
        embedded = dc_jupyter.start_local(2)
        on_embedded = compute_this(client=embedded)(trivial)
        on_external = compute_this(address=external.address)(trivial)
        with Client(external.address, set_as_default=False) as bare:

            def call(func, push: bool):
                def once():
                    limit = "64 kB" if push else 0
                    with dask.config.set({"dc_jupyter.push-results-below": limit}):
                        return func(1).compute()

                return once

            calls = {
                "embedded, pushed": call(on_embedded, True),
                "embedded, fetched": call(on_embedded, False),
                "external, pushed": call(on_external, True),
                "external, fetched": call(on_external, False),
                "bare Dask, external": lambda: bare.submit(trivial, 1, pure=False).result(),
            }
            samples: dict[str, list[float]] = {name: [] for name in calls}
            rng = random.Random(14)
            for i in range(args.rounds + 5):  # the first rounds connect and warm up
                order = list(calls.items())
                rng.shuffle(order)
                for name, fn in order:
                    start = time.perf_counter()
                    fn()
                    if i >= 5:
                        samples[name].append(time.perf_counter() - start)
    finally:
        dc_jupyter.close()
        external.stop()
    medians = {name: statistics.median(s) for name, s in samples.items()}
    for name, median in medians.items():
        print(f"{name:22} {median * 1000:7.2f} ms")
    bare_median = medians["bare Dask, external"]
    for kind in ("pushed", "fetched"):
        print(f"external, {kind} / bare Dask: {medians[f'external, {kind}'] / bare_median:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
