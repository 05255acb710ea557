"""The load test: throughput, scaling and per-worker allocation on real Dask processes.

``python -m dc_jupyter.loadtest`` starts its own ``dask scheduler`` and
``dask worker`` processes (one thread each) on 127.0.0.1, grows the cluster
through the requested worker counts, and at each count runs ``func.map`` over
every combination of number of functions (items) and function length. It
prints progress in the terminal and writes ``loadtest.csv``, ``loadtest.json``
and, when matplotlib is installed (``pip install dc_jupyter[plot]``), PNG plots.

The functions sleep by default: on a machine with fewer cores than workers a
CPU-bound function measures the cores, not the system; sleeping measures
dispatch, batching and allocation, which is what this tests. ``--work cpu``
spins instead. Not a benchmark of Dask itself (see ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dc_jupyter.tools.cluster import ProcessCluster
from dc_jupyter.tools.loadtest.results import LoadTestConfig, LoadTestResult, Run

__all__ = ["LoadTestConfig", "LoadTestResult", "Run", "main", "run_load_test"]


def _make_work(kind: str) -> Callable[[int, float], int]:
    # Built inside a function so cloudpickle ships it by value: the workers
    # do not have dc_jupyter installed.
    def sleep_work(i: int, seconds: float) -> int:
        import time

        time.sleep(seconds)
        return i

    def cpu_work(i: int, seconds: float) -> int:
        import time

        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return i

    if kind not in ("sleep", "cpu"):
        raise ValueError(f"work must be 'sleep' or 'cpu', not {kind!r}")
    return sleep_work if kind == "sleep" else cpu_work


class _Progress:
    """One self-overwriting terminal line (or plain lines when not a TTY)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()


def _watch(handle: Any, label: str, progress: _Progress) -> list[Any]:
    while not handle.done():
        p = handle.progress()
        rate = p.done / max(time.monotonic() - p.started_at, 1e-9)
        progress.update(f"{label}: {p.done}/{p.total} done, {p.running} running, {rate:,.0f}/s")
        time.sleep(0.1)
    return handle.result()


def run_load_test(config: LoadTestConfig, progress: _Progress | None = None) -> LoadTestResult:
    """Start a cluster, grow it through ``config.workers`` and measure every run."""
    import os
    import platform

    import dc_jupyter
    from dc_jupyter import compute_this

    progress = progress or _Progress()
    counts = sorted(set(config.workers))
    if not counts or counts[0] < 1:
        raise ValueError(f"workers must be whole numbers >= 1, not {list(config.workers)!r}")
    work = _make_work(config.work)
    runs: list[Run] = []
    latencies: dict[int, list[float]] = {}
    cluster = ProcessCluster(n_workers=counts[0])
    progress.line(f"starting dask scheduler and {counts[0]} dask worker(s)...")
    cluster.start()
    try:
        client = dc_jupyter.connect(cluster.address)
        job = compute_this(work)
        job(0, 0.0).compute()  # warm up: connection, version check, worker imports
        for n_workers in counts:
            while len(cluster.workers) < n_workers:
                cluster.add_worker()
            cluster.wait_for_workers(n_workers)
            client.wait_for_workers(n_workers)
            latencies[n_workers] = []
            for _ in range(config.latency_samples):
                start = time.perf_counter()
                job(0, 0.0).compute()
                latencies[n_workers].append(time.perf_counter() - start)
            for n_functions in config.n_functions:
                for duration in config.durations:
                    label = f"{n_workers} workers, {n_functions} x {duration * 1000:g} ms"
                    start = time.perf_counter()
                    handle = job.map(range(n_functions), [duration] * n_functions).submit()
                    results = _watch(handle, label, progress)
                    wall = time.perf_counter() - start
                    assert results == list(range(n_functions))
                    final = handle.progress()
                    throughput = n_functions / wall
                    ideal = n_workers / duration
                    runs.append(
                        Run(
                            workers=n_workers,
                            n_functions=n_functions,
                            duration=duration,
                            wall_seconds=wall,
                            throughput=throughput,
                            ideal_throughput=ideal,
                            efficiency=throughput / ideal,
                            tasks=handle.tasks_sent,
                            per_worker_functions=dict(final.per_worker),
                            per_worker_busy_seconds=handle.busy_seconds(),
                        )
                    )
                    progress.line(
                        f"{label}: {throughput:,.1f}/s, ideal {ideal:,.1f}/s "
                        f"({throughput / ideal:.0%}), {handle.tasks_sent} tasks"
                    )
            median_ms = statistics.median(latencies[n_workers]) * 1000
            progress.line(f"{n_workers} workers: median round trip {median_ms:.1f} ms")
    finally:
        dc_jupyter.close()
        cluster.stop()
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    return LoadTestResult(config, runs, latencies, machine)


def _numbers(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s like 1,2,4, not {text!r}"
            ) from None

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dc_jupyter.loadtest --help``."""
    parser = argparse.ArgumentParser(
        prog="python -m dc_jupyter.loadtest",
        description="Measure dc_jupyter on a cluster of dask worker processes it starts itself.",
    )
    parser.add_argument(
        "--workers",
        type=_numbers(int),
        default=[1, 2, 4, 8],
        help="worker counts to measure, e.g. 1,2,4,8 (one thread each)",
    )
    parser.add_argument(
        "--functions",
        type=_numbers(int),
        default=[100, 400],
        help="numbers of function calls per run, e.g. 100,400",
    )
    parser.add_argument(
        "--durations",
        type=_numbers(float),
        default=[0.01, 0.05],
        help="seconds each call takes, e.g. 0.01,0.05",
    )
    parser.add_argument(
        "--work",
        choices=["sleep", "cpu"],
        default="sleep",
        help="sleep (measures dispatch; default) or spin the CPU",
    )
    parser.add_argument(
        "--latency-samples",
        type=int,
        default=30,
        help="single-call round trips timed per worker count",
    )
    parser.add_argument("--out", default="loadtest-results", help="directory for the files")
    parser.add_argument("--no-plots", action="store_true", help="only the CSV and JSON")
    args = parser.parse_args(argv)  # fmt: skip
    config = LoadTestConfig(
        workers=args.workers,
        n_functions=args.functions,
        durations=args.durations,
        work=args.work,
        latency_samples=args.latency_samples,
        out_dir=args.out,
    )
    result = run_load_test(config)
    plots = not args.no_plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed: no plots (pip install 'dc_jupyter[plot]')")
            plots = False
    paths = result.write(args.out)
    if plots:
        from dc_jupyter.tools.loadtest.plots import save_plots

        paths += save_plots(result, args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
