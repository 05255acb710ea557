"""How long the first ``func(2).compute()`` takes on the embedded default cluster.

Each round runs a fresh interpreter (so imports are counted the same way for
every checkout) and prints the seconds from the call to its result, which
includes starting the scheduler and the workers. Compare two checkouts:

    python benchmarks/embedded_startup.py --rounds 5 --checkout /tmp/before --checkout .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

PROBE = """
import time
from dc_jupyter import compute_this

@compute_this()
def func(x):
    return x * x

if __name__ == "__main__":  # the old LocalCluster needs the guard; harmless otherwise
    started = time.monotonic()
    assert func(2).compute() == 4
    print(time.monotonic() - started)
"""


def first_call_seconds(checkout: str, n_workers: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    env["DASK_DC_JUPYTER__LOCAL__N_WORKERS"] = str(n_workers)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    checkouts = args.checkout or ["."]
    times: dict[str, list[float]] = {c: [] for c in checkouts}
    for _ in range(args.rounds):
        for checkout in checkouts:  # interleaved, so load changes hit both alike
            times[checkout].append(first_call_seconds(checkout, args.workers))
    for checkout, values in times.items():
        print(
            f"{checkout}: first call {statistics.median(values):.2f} s median of {len(values)} "
            f"({', '.join(f'{v:.2f}' for v in values)}), {args.workers} workers"
        )


if __name__ == "__main__":
    main()
