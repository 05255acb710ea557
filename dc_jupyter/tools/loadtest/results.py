"""What a load test measured: its settings, one record per map, and the files they go to.

Plain data, shared by ``run`` (which fills it) and ``plots`` (which draws it).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoadTestConfig:
    """What to measure. Every run is one ``func.map`` over ``n_functions`` items."""

    workers: Sequence[int] = (1, 2, 4)
    n_functions: Sequence[int] = (100, 400)
    durations: Sequence[float] = (0.01, 0.05)  # seconds each function call takes
    work: str = "sleep"  # or "cpu"
    latency_samples: int = 30  # single round trips per worker count
    out_dir: str = "loadtest-results"


@dataclass
class Run:
    """One map: ``n_functions`` calls of ``duration`` s on ``workers`` workers."""

    workers: int
    n_functions: int
    duration: float
    wall_seconds: float
    throughput: float  # functions per second
    ideal_throughput: float  # workers / duration
    efficiency: float  # throughput / ideal
    tasks: int  # Dask tasks the map was sent as
    per_worker_functions: dict[str, int] = field(default_factory=dict)
    per_worker_busy_seconds: dict[str, float] = field(default_factory=dict)


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

    def write(self, out_dir: str | Path | None = None) -> list[Path]:
        """Write the CSV and the JSON (the plots: ``plots.save_plots``)."""
        out = Path(out_dir or self.config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = self.table()
        paths = [out / "loadtest.csv", out / "loadtest.json"]
        with open(paths[0], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["workers"])
            writer.writeheader()
            writer.writerows(rows)
        paths[1].write_text(
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
        return paths
