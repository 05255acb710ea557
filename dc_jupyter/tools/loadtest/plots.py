"""Plots of a load test (matplotlib, the optional ``plot`` extra).

Each function returns a matplotlib ``Figure`` so a notebook can show it inline;
``save_plots`` writes them all as PNG files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dc_jupyter.tools.loadtest.results import LoadTestResult


def _pyplot() -> Any:
    try:
        import matplotlib

        if matplotlib.get_backend().lower().startswith("qt"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            'The load test\'s plots need matplotlib: pip install -e ".[plot]" in a '
            "dc_jupyter checkout (or pip install matplotlib)"
        ) from exc
    return plt


def throughput_vs_workers(result: LoadTestResult) -> Any:
    """Throughput against worker count, per mode and function length, with the ideal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    n = max(r.n_functions for r in result.runs)
    styles = {"map": "o-", "jobs": "s:"}
    for duration in sorted({r.duration for r in result.runs}):
        color = None
        for mode in _modes(result):
            runs = sorted(
                (r for r in result.runs
                 if r.mode == mode and r.duration == duration and r.n_functions == n),
                key=lambda r: r.workers,
            )  # fmt: skip
            if not runs:
                continue
            label = f"{mode}, {duration * 1000:g} ms"
            line = ax.plot([r.workers for r in runs], [r.throughput for r in runs],
                           styles.get(mode, "o-"), color=color, label=label)  # fmt: skip
            if color is None:
                color = line[0].get_color()
                ax.plot([r.workers for r in runs], [r.ideal_throughput for r in runs], "--",
                        color=color, alpha=0.5, label=f"ideal, {duration * 1000:g} ms")  # fmt: skip
    ax.set_xticks(sorted({r.workers for r in result.runs}))
    ax.set(xlabel="workers", ylabel="functions / s", title=f"Throughput vs workers ({n} functions)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _modes(result: LoadTestResult) -> list[str]:
    return [m for m in ("jobs", "map") if any(r.mode == m for r in result.runs)]


def throughput_vs_functions(result: LoadTestResult) -> Any:
    """Throughput against number of functions (left) and their length (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    workers = max(r.workers for r in result.runs)
    for mode in _modes(result):
        runs = [r for r in result.runs if r.workers == workers and r.mode == mode]
        for duration in sorted({r.duration for r in runs}):
            some = sorted((r for r in runs if r.duration == duration), key=lambda r: r.n_functions)
            left.plot([r.n_functions for r in some], [r.throughput for r in some], "o-",
                      label=f"{mode}, {duration * 1000:g} ms each")  # fmt: skip
        for n in sorted({r.n_functions for r in runs}):
            some = sorted((r for r in runs if r.n_functions == n), key=lambda r: r.duration)
            right.plot([r.duration * 1000 for r in some], [r.throughput for r in some], "o-",
                       label=f"{mode}, {n} functions")  # fmt: skip
    left.set(xlabel="number of functions", ylabel="functions / s",
             title=f"Throughput vs number ({workers} workers)")  # fmt: skip
    right.set(xlabel="function length (ms)", ylabel="functions / s",
              title=f"Throughput vs length ({workers} workers)")  # fmt: skip
    left.legend(fontsize="small")
    right.legend(fontsize="small")
    fig.tight_layout()
    return fig


def per_worker(result: LoadTestResult) -> Any:
    """Functions and busy seconds per worker, in the largest run."""
    plt = _pyplot()
    run = max(result.runs, key=lambda r: (r.workers, r.n_functions, r.duration))
    names = sorted(run.per_worker_functions)
    short = [name.rsplit(":", 1)[-1] for name in names]  # the port tells workers apart
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(short, [run.per_worker_functions[n] for n in names])
    right.bar(short, [run.per_worker_busy_seconds.get(n, 0.0) for n in names], color="tab:orange")
    title = f"{run.mode}: {run.n_functions} x {run.duration * 1000:g} ms on {run.workers} workers"
    left.set(xlabel="worker (port)", ylabel="functions run", title=f"Functions per worker\n{title}")
    right.set(xlabel="worker (port)", ylabel="busy seconds", title=f"Busy time per worker\n{title}")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    return fig


def latency(result: LoadTestResult) -> Any:
    """Distribution of single-call round trips, per worker count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = sorted(result.latencies)
    ax.boxplot([[s * 1000 for s in result.latencies[c]] for c in counts])
    ax.set_xticks(range(1, len(counts) + 1), [str(c) for c in counts])
    ax.set(xlabel="workers", ylabel="round trip (ms)", title="func(x).compute() latency")
    fig.tight_layout()
    return fig


def throughput_over_time(result: LoadTestResult) -> Any:
    """Calls finished per second during each run, one panel per mode."""
    plt = _pyplot()
    modes = _modes(result)
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for run in (r for r in result.runs if r.mode == mode):
            seconds = range(1, len(run.timeline) + 1)
            label = f"{run.workers} w, {run.n_functions} x {run.duration * 1000:g} ms"
            ax.plot(seconds, run.timeline, "o-", markersize=3, label=label)
        ax.set(xlabel="second of the run", ylabel="calls finished in that second",
               title=f"Throughput over time ({mode})")  # fmt: skip
        ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    return fig


def allocation(result: LoadTestResult) -> Any:
    """Every run: each worker's share of the calls (top) and how busy it was (bottom)."""
    plt = _pyplot()
    runs = result.runs
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.55 * len(runs) + 2), 7), sharex=True)
    workers = sorted({w for r in runs for w in r.per_worker_functions})
    colors = {w: plt.cm.tab20(i % 20) for i, w in enumerate(workers)}
    x = range(len(runs))
    bottoms = [0.0] * len(runs)
    for worker in workers:
        shares = [r.per_worker_functions.get(worker, 0) / r.n_functions for r in runs]
        top.bar(x, shares, bottom=bottoms, color=colors[worker], label=worker.rsplit(":", 1)[-1])
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
        busy = [
            (i, r.per_worker_busy_seconds[worker] / r.wall_seconds)
            for i, r in enumerate(runs)
            if worker in r.per_worker_busy_seconds and r.wall_seconds
        ]
        bottom.scatter([i for i, _ in busy], [b for _, b in busy], color=colors[worker], s=18)
    top.set(ylabel="share of the calls", title="Allocation per worker, every run")
    top.legend(
        title="worker (port)", fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0)
    )
    bottom.set(ylabel="busy share (busy s / wall s)", ylim=(0, 1.15))
    bottom.set_xticks(list(x), [r.label for r in runs], rotation=70, ha="right", fontsize="x-small")
    fig.tight_layout()
    return fig


PLOTS = {
    "throughput_over_time": throughput_over_time,
    "allocation": allocation,
    "throughput_vs_workers": throughput_vs_workers,
    "throughput_vs_functions": throughput_vs_functions,
    "per_worker": per_worker,
    "latency": latency,
}


def save_plots(result: LoadTestResult, out_dir: str | Path) -> list[Path]:
    """Write every plot as ``<name>.png`` in ``out_dir``; return the paths."""
    plt = _pyplot()
    paths = []
    for name, make in PLOTS.items():
        fig = make(result)
        path = Path(out_dir) / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
