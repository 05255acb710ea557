"""The load test: the CLI and notebook 04 on their own real scheduler and workers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_cli_on_a_small_configuration_writes_table_and_plots(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "dc_jupyter.loadtest", "--workers", "1,2", "--functions", "8,16",
         "--durations", "0.01", "--latency-samples", "3", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "starting dask scheduler" in proc.stderr  # terminal progress
    assert "2 workers, 16 x 10 ms" in proc.stderr

    rows = list(csv.DictReader(open(out / "loadtest.csv")))
    assert [(r["workers"], r["n_functions"]) for r in rows] == [
        ("1", "8"), ("1", "16"), ("2", "8"), ("2", "16")
    ]  # fmt: skip
    for row in rows:
        assert float(row["throughput_per_s"]) > 0
        # 10 ms functions: at most 100 a second per one-thread worker
        assert float(row["ideal_per_s"]) == {"1": 100.0, "2": 200.0}[row["workers"]]
    data = json.loads((out / "loadtest.json").read_text())
    two = [r for r in data["runs"] if r["workers"] == 2]
    # The allocation per worker adds up to every function, on both workers.
    assert all(sum(r["per_worker_functions"].values()) == r["n_functions"] for r in two)
    assert any(len(r["per_worker_functions"]) == 2 for r in two)
    assert len(data["latency_seconds"]["2"]) == 3
    for name in ("throughput_vs_workers", "throughput_vs_functions", "per_worker", "latency"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {out / 'latency.png'}" in proc.stdout


def test_cli_rejects_bad_numbers_with_usage(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dc_jupyter.loadtest", "--workers", "one,two"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "expected comma-separated ints like 1,2,4, not 'one,two'" in proc.stderr


def test_notebook_04_runs_and_shows_table_and_plots(tmp_path):
    source = ROOT / "notebooks" / "04-load-test.ipynb"
    nb = nbformat.read(source, as_version=4)
    # Saved without outputs, so the repository stays clean and diffs readable.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_path) if p)
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    finally:
        os.environ["PYTHONPATH"] = env_path
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # throughput vs workers, vs functions, per worker, latency
    table = next(
        o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})
    )
    assert "| workers | n_functions |" in table and "| 2 | 60 | 0.03 |" in table
    assert (tmp_path / "loadtest-results" / "loadtest.csv").exists()
