"""What a load test measured: its settings, one record per run, and the files they go to.

Plain data, shared by ``run`` (which fills it) and ``plots`` (which draws it).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dc_jupyter.tools.loadtest.measure import MODES

__all__ = ["LoadTestConfig", "LoadTestResult", "Run"]


@dataclass
class LoadTestConfig:
    """What to measure, and where.

    Every run is ``n_functions`` calls of ``duration`` seconds on one worker
    count, in one mode (``"jobs"``: one task per call; ``"map"``: one batched
    ``func.map``). ``workers=None`` means 1, 2, 4, 8 on the built-in cluster and
    1, 2, 4, ... all workers on an existing one (``scheduler`` or
    ``scheduler_file``).
    """

    workers: Sequence[int] | None = (1, 2, 4)
    n_functions: Sequence[int] = (100, 400)
    durations: Sequence[float] = (0.01, 0.05)  # seconds each function call takes
    modes: Sequence[str] = ("jobs", "map")
    work: str = "sleep"  # or "cpu"
    latency_samples: int = 30  # single round trips per worker count
    out_dir: str = "loadtest-results"
    scheduler: str | None = None  # an existing cluster's address ...
    scheduler_file: str | None = None  # ... or its scheduler file
    progress_every: float = 2.0  # seconds between plain progress lines (not a terminal)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be 'jobs' and/or 'map', not {list(self.modes)!r}")
        if self.workers is not None and (not self.workers or min(self.workers) < 1):
            raise ValueError(f"workers must be whole numbers >= 1, not {list(self.workers)!r}")


@dataclass
class Run:
    """One configuration: ``n_functions`` calls of ``duration`` s on ``workers`` workers."""

    mode: str  # "jobs" or "map"
    workers: int
    n_functions: int
    duration: float
    wall_seconds: float
    throughput: float  # functions per second
    ideal_throughput: float  # slots / duration (slots: threads, or workers if one per worker)
    efficiency: float  # throughput / ideal
    tasks: int  # Dask tasks the calls were sent as
    per_worker_functions: dict[str, int] = field(default_factory=dict)
    per_worker_busy_seconds: dict[str, float] = field(default_factory=dict)
    timeline: list[int] = field(default_factory=list)  # calls finished in each second

    @property
    def label(self) -> str:
        return (
            f"{self.mode}, {self.workers} workers, {self.n_functions} x {self.duration * 1000:g} ms"
        )


@dataclass
class LoadTestResult:
    """All runs plus single-call latencies (seconds) per worker count."""

    config: LoadTestConfig
    runs: list[Run]
    latencies: dict[int, list[float]]
    machine: dict[str, Any]

    def table(self) -> list[dict[str, Any]]:
        """One flat row per run (what ``loadtest.csv`` holds)."""
        rows = []
        for run in self.runs:
            busy = run.per_worker_busy_seconds
            rows.append(
                {
                    "mode": run.mode,
                    "workers": run.workers,
                    "n_functions": run.n_functions,
                    "duration_s": run.duration,
                    "wall_s": round(run.wall_seconds, 4),
                    "throughput_per_s": round(run.throughput, 2),
                    "ideal_per_s": round(run.ideal_throughput, 2),
                    "efficiency": round(run.efficiency, 4),
                    "tasks": run.tasks,
                    "functions_per_worker": " ".join(
                        str(n) for n in sorted(run.per_worker_functions.values())
                    ),
                    "busy_s_per_worker": " ".join(f"{s:.2f}" for s in sorted(busy.values())),
                }
            )
        return rows

    def timeseries(self) -> list[dict[str, Any]]:
        """Calls finished in each second of each run (what ``timeseries.csv`` holds)."""
        return [
            {
                "mode": r.mode,
                "workers": r.workers,
                "n_functions": r.n_functions,
                "duration_s": r.duration,
                "second": k + 1,
                "calls": calls,
            }  # fmt: skip
            for r in self.runs
            for k, calls in enumerate(r.timeline)
        ]

    def per_worker(self) -> list[dict[str, Any]]:
        """Each worker's calls and busy share in each run (what ``per_worker.csv`` holds)."""
        rows = []
        for r in self.runs:
            for worker in sorted(r.per_worker_functions):
                busy = r.per_worker_busy_seconds.get(worker, 0.0)
                rows.append(
                    {"mode": r.mode, "workers": r.workers, "n_functions": r.n_functions,
                     "duration_s": r.duration, "worker": worker,
                     "calls": r.per_worker_functions[worker], "busy_s": round(busy, 4),
                     "busy_share": round(busy / r.wall_seconds, 4) if r.wall_seconds else 0.0}
                )  # fmt: skip
        return rows

    def write(self, out_dir: str | Path | None = None) -> list[Path]:
        """Write the CSVs and the JSON (the plots are ``plots.save_plots``)."""
        out = Path(out_dir or self.config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, rows in (
            ("loadtest.csv", self.table()),
            ("timeseries.csv", self.timeseries()),
            ("per_worker.csv", self.per_worker()),
        ):
            path = out / name
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["mode"])
                writer.writeheader()
                writer.writerows(rows)
            paths.append(path)
        path = out / "loadtest.json"
        path.write_text(
            json.dumps(
                {
                    "config": asdict(self.config),
                    "machine": self.machine,
                    "runs": [asdict(r) for r in self.runs],
                    "latency_seconds": {str(k): v for k, v in self.latencies.items()},
                },
                indent=2,
            )
        )
        paths.insert(1, path)
        return paths
