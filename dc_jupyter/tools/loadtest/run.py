"""The load test: throughput, scaling and per-worker allocation on real Dask processes.

``python -m dc_jupyter.loadtest`` starts its own ``dask scheduler`` and
``dask worker`` processes (one thread each) on 127.0.0.1 and grows the cluster
through the requested worker counts; with ``--scheduler ADDRESS`` (or
``--scheduler-file``) it uses a running cluster instead, over subsets of its
workers (1, 2, 4, ... all) chosen with Dask's ``workers=`` restrictions. At
each count it runs every combination of number of functions (calls) and
function length, as independent jobs (one task per call) and/or as one
batched ``func.map`` (``--mode``). It monitors live in the terminal and writes
``loadtest.csv``, ``loadtest.json``, ``timeseries.csv`` (calls finished per
second), ``per_worker.csv`` and, when matplotlib is installed
(``pip install -e ".[plot]"`` in a checkout), PNG plots.

The functions sleep by default: on a machine with fewer cores than workers a
CPU-bound function measures the cores, not the system; sleeping measures
dispatch, batching and allocation, which is what this tests. ``--work cpu``
spins instead. Not a benchmark of Dask itself (see ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from dc_jupyter.backends.dask import connection
from dc_jupyter.backends.dask.backend import DaskBackend, one_per_worker, threads_warning
from dc_jupyter.core.function import JobOptions, compute_this
from dc_jupyter.tools.loadtest.measure import MODES, make_work
from dc_jupyter.tools.loadtest.monitor import Monitor
from dc_jupyter.tools.loadtest.results import LoadTestConfig, LoadTestResult, Run
from dc_jupyter.tools.loadtest.target import ExistingCluster, OwnCluster

__all__ = ["LoadTestConfig", "LoadTestResult", "Run", "main", "run_load_test"]


def _worker_states(client: Any) -> Callable[[list[str]], dict[str, str]]:
    """Each worker's state from the scheduler: tasks it is processing now, or gone."""

    def states(workers: list[str]) -> dict[str, str]:
        processing = client.processing()
        return {
            w: (
                "gone"
                if w not in processing
                else f"busy, {len(processing[w])} tasks"
                if processing[w]
                else "idle"
            )  # fmt: skip
            for w in workers
        }

    return states


def _dashboard(client: Any) -> str:
    """The dashboard link, if the scheduler serves one: Dask lists a "dashboard"
    service even under ``--no-dashboard`` or without bokeh, where the page is a 404."""
    if "dashboard" not in connection.identity(client).get("services", {}):
        return _NO_DASHBOARD
    link = client.dashboard_link
    if not link.endswith("/status"):
        return link  # a custom link template: trust it
    # The plot index, not the page: opening /status would add Dask's
    # task-stream plugin to a cluster the load test must leave as it found it.
    try:
        with urllib.request.urlopen(
            link[: -len("status")] + "individual-plots.json", timeout=2
        ) as r:
            return link if json.load(r) else _NO_DASHBOARD
    except (OSError, ValueError):
        return _NO_DASHBOARD


_NO_DASHBOARD = "none (the scheduler serves no dashboard: it needs bokeh, and no --no-dashboard)"


def run_load_test(config: LoadTestConfig, monitor: Monitor | None = None) -> LoadTestResult:
    """Measure every configuration on the built-in cluster or on ``config.scheduler``."""
    if config.scheduler or config.scheduler_file:
        target: Any = ExistingCluster(config.scheduler, config.scheduler_file, config.workers)
    else:
        target = OwnCluster(config.workers or (1, 2, 4, 8))
    monitor = monitor or Monitor(plain_every=config.progress_every)
    work = make_work(config.work)
    runs: list[Run] = []
    latencies: dict[int, list[float]] = {}
    nthreads: dict[str, int] = {}
    if not target.existing:
        monitor.line("starting dask scheduler and dask worker processes on 127.0.0.1...")
    client = target.start(monitor.line)
    try:
        monitor.state, monitor.dashboard = _worker_states(client), _dashboard(client)
        monitor.line(f"load test on {target.where()}; dashboard: {monitor.dashboard}")
        nthreads = client.nthreads()
        warning = threads_warning(nthreads)
        if warning:
            monitor.line(f"Warning: {warning}")
        for n_workers in target.worker_counts():
            workers = target.workers(n_workers)
            slots = {w: 1 if one_per_worker() else nthreads.get(w, 1) for w in workers}
            backend = DaskBackend(JobOptions(client=client), workers=workers)
            job = compute_this(work, backend=backend)
            job(0, 0.0).compute()  # warm up: version check, worker code, worker imports
            latencies[n_workers] = []
            for _ in range(config.latency_samples):
                start = time.perf_counter()
                job(0, 0.0).compute()
                latencies[n_workers].append(time.perf_counter() - start)
            for mode in config.modes:
                for n_functions in config.n_functions:
                    for duration in config.durations:
                        run = _measure(mode, job, n_functions, duration, workers, slots, monitor)
                        runs.append(run)
                        monitor.line(
                            f"{run.label}: {run.throughput:,.1f}/s, ideal "
                            f"{run.ideal_throughput:,.1f}/s ({run.efficiency:.0%}), "
                            f"{run.tasks} tasks, calls per worker "
                            f"{sorted(run.per_worker_functions.values())}"
                        )
            median_ms = (
                statistics.median(latencies[n_workers]) * 1000 if latencies[n_workers] else 0
            )
            monitor.line(f"{n_workers} workers: median round trip {median_ms:.1f} ms")
    finally:
        target.close()
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cluster": target.where(),
        "threads_per_worker": sorted(set(nthreads.values())),
        "one_per_worker": one_per_worker(),
    }
    return LoadTestResult(config, runs, latencies, machine)


def _measure(
    mode: str,
    job: Any,
    n_functions: int,
    duration: float,
    workers: list[str],
    slots: dict[str, int],
    monitor: Monitor,
) -> Run:
    label = f"{mode}, {len(workers)} workers, {n_functions} x {duration * 1000:g} ms"
    live_args = {"label": label, "workers": workers, "slots_per_worker": slots}
    results, wall, tasks, live = MODES[mode](job, n_functions, duration, live_args, monitor)
    if [r[0] for r in results] != list(range(n_functions)):
        raise RuntimeError(f"{label}: results came back wrong or out of order")
    calls: dict[str, int] = {}
    busy: dict[str, float] = {}
    for _, worker, seconds in results:
        calls[worker] = calls.get(worker, 0) + 1
        busy[worker] = busy.get(worker, 0.0) + seconds
    stray = set(calls) - set(workers)
    if stray:
        raise RuntimeError(f"{label}: calls ran on workers outside the subset: {sorted(stray)}")
    throughput = n_functions / wall
    ideal = sum(slots.values()) / duration if duration else float("inf")
    return Run(
        mode=mode,
        workers=len(workers),
        n_functions=n_functions,
        duration=duration,
        wall_seconds=wall,
        throughput=throughput,
        ideal_throughput=ideal,
        efficiency=throughput / ideal,
        tasks=tasks,
        per_worker_functions=calls,
        per_worker_busy_seconds=busy,
        timeline=live.timeline(wall),
    )


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
        description=(
            "Load-test dc_jupyter on dask worker processes it starts itself, or on a running "
            "cluster (--scheduler / --scheduler-file), with live monitoring."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running scheduler, e.g. tcp://10.0.0.5:8786")  # fmt: skip
    where.add_argument("--scheduler-file", metavar="FILE",
                       help="the file `dask scheduler --scheduler-file FILE` wrote")  # fmt: skip
    parser.add_argument(
        "--workers",
        type=_numbers(int),
        default=None,
        help="worker counts to measure, e.g. 1,2,4,8 (default: 1,2,4,8 on the built-in "
        "cluster; 1,2,4,... all on --scheduler)",
    )
    parser.add_argument(
        "--mode",
        choices=["jobs", "map", "both"],
        default="both",
        help="jobs: one Dask task per call (.submit()); map: one batched func.map; both (default)",
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
    parser.add_argument(
        "--progress-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between progress lines when not on a terminal",
    )
    parser.add_argument("--out", default="loadtest-results", help="directory for the files")
    parser.add_argument("--no-plots", action="store_true", help="only the CSV and JSON")
    args = parser.parse_args(argv)  # fmt: skip
    try:
        config = LoadTestConfig(
            workers=args.workers,
            n_functions=args.functions,
            durations=args.durations,
            modes=["jobs", "map"] if args.mode == "both" else [args.mode],
            work=args.work,
            latency_samples=args.latency_samples,
            out_dir=args.out,
            scheduler=args.scheduler,
            scheduler_file=args.scheduler_file,
            progress_every=args.progress_every,
        )
        result = run_load_test(config)
    except (ValueError, RuntimeError, OSError) as exc:
        parser.exit(1, f"error: {exc}\n")
    plots = not args.no_plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print('matplotlib is not installed: no plots (pip install -e ".[plot]")')
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
