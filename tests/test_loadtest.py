"""The load test and one function per worker, on real dask scheduler and worker processes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dc_jupyter.tools.cluster import ProcessCluster

ROOT = Path(__file__).parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Hang guards only, generous: these start a cluster and run many configurations,
# and on a shared 2-core machine under heavy load that took over 5 minutes.
SLOW = pytest.mark.timeout(1200)


@contextmanager
def _cluster(tmp_path: Path, n_workers: int, nthreads: int = 1) -> Iterator[ProcessCluster]:
    """Real scheduler and workers; a generous start-up wait, as the machine is shared."""
    cluster = ProcessCluster(n_workers, nthreads=nthreads, workdir=str(tmp_path / "cluster"))
    try:
        yield cluster.start(timeout=240)
    finally:
        cluster.stop()


def _loadtest(*args: str, cwd: Path, timeout: float = 1100) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "dc_jupyter.loadtest", *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd,
    )  # fmt: skip


def _cluster_state(address: str) -> dict:
    """Tasks, data and plugins the scheduler holds, seen from a fresh client."""
    from distributed import Client

    def state(dask_scheduler):
        return {
            "tasks": len(dask_scheduler.tasks),
            "worker_plugins": sorted(dask_scheduler.worker_plugins),
            "scheduler_plugins": sorted(dask_scheduler.plugins),
        }

    with Client(address, timeout="30s", set_as_default=False) as client:
        found = client.run_on_scheduler(state)
        found["data"] = sum(len(keys) for keys in client.has_what().values())
    return found


@SLOW
def test_cli_on_the_built_in_cluster_writes_table_and_plots(tmp_path):
    out = tmp_path / "results"
    proc = _loadtest("--workers", "1,2", "--functions", "8", "--durations", "0.01", "--mode",
                     "map", "--latency-samples", "2", "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "starting dask scheduler" in proc.stderr  # terminal progress
    assert "map, 2 workers, 8 x 10 ms" in proc.stderr

    rows = list(csv.DictReader(open(out / "loadtest.csv")))
    assert [(r["mode"], r["workers"], r["n_functions"]) for r in rows] == [
        ("map", "1", "8"), ("map", "2", "8")
    ]  # fmt: skip
    for row in rows:
        assert float(row["throughput_per_s"]) > 0
        # 10 ms functions: at most 100 a second per one-thread worker
        assert float(row["ideal_per_s"]) == {"1": 100.0, "2": 200.0}[row["workers"]]
    data = json.loads((out / "loadtest.json").read_text())
    two = [r for r in data["runs"] if r["workers"] == 2]
    # The allocation per worker adds up to every function.
    assert all(sum(r["per_worker_functions"].values()) == r["n_functions"] for r in two)
    assert len(data["latency_seconds"]["2"]) == 2
    for name in ("throughput_over_time", "allocation", "throughput_vs_workers",
                 "throughput_vs_functions", "per_worker", "latency"):  # fmt: skip
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {out / 'latency.png'}" in proc.stdout


@SLOW
def test_scheduler_option_runs_both_modes_on_worker_subsets_and_leaves_no_trace(tmp_path):
    """A running dask scheduler with three dask workers, started here, load-tested from outside."""
    out = tmp_path / "results"
    with _cluster(tmp_path, 3) as cluster:
        address = cluster.address  # (the scheduler removes its file when it stops)
        before = _cluster_state(address)
        proc = _loadtest("--scheduler", address, "--functions", "6", "--durations",
                         "0.01", "--latency-samples", "1", "--progress-every", "0.2",
                         "--no-plots", "--out", str(out), cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        after = _cluster_state(address)
        workers = set(cluster_workers(address))

    # Left as found: no tasks, no data, no plugins but dc_jupyter's own.
    assert after["tasks"] == 0 and after["data"] == 0
    for kind in ("scheduler_plugins", "worker_plugins"):
        added = set(after[kind]) - set(before[kind])
        assert added and all("dc_jupyter" in name for name in added), (kind, added)

    # Not a terminal (a pipe): plain progress lines, no cursor movement.
    assert f"load test on the cluster at {address} (3 workers)" in proc.stderr
    assert "dashboard: http://127.0.0.1:" in proc.stderr
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    assert "[jobs, 3 workers, 6 x 10 ms]" in proc.stderr and re.search(
        r"\d+ calls, \d+% busy", proc.stderr
    )

    # Both modes at 1, 2 and 3 workers, each on that many workers, every call counted.
    rows = list(csv.DictReader(open(out / "loadtest.csv")))
    configs = [(r["mode"], int(r["workers"])) for r in rows]
    assert configs == [(m, n) for n in (1, 2, 3) for m in ("jobs", "map")]
    assert {int(r["tasks"]) for r in rows if r["mode"] == "jobs"} == {6}  # one task per call
    series = list(csv.DictReader(open(out / "timeseries.csv")))
    per_worker = list(csv.DictReader(open(out / "per_worker.csv")))
    for mode, n in configs:
        mine = [r for r in series if (r["mode"], int(r["workers"])) == (mode, n)]
        assert [int(r["second"]) for r in mine] == list(range(1, len(mine) + 1))
        assert sum(int(r["calls"]) for r in mine) == 6
        used = [r for r in per_worker if (r["mode"], int(r["workers"])) == (mode, n)]
        assert 1 <= len(used) <= n and {r["worker"] for r in used} <= workers
        assert sum(int(r["calls"]) for r in used) == 6
    three = {r["worker"] for r in per_worker if r["workers"] == "3" and r["mode"] == "jobs"}
    assert len(three) >= 2  # the jobs spread beyond one worker when allowed


def cluster_workers(address: str) -> list[str]:
    from distributed import Client

    with Client(address, timeout="30s", set_as_default=False) as client:
        return list(client.nthreads())


def test_cli_rejects_bad_numbers_with_usage(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dc_jupyter.loadtest", "--workers", "one,two"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=1100, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "expected comma-separated ints like 1,2,4, not 'one,two'" in proc.stderr


@SLOW
def test_cli_names_an_unreachable_scheduler(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_DC_JUPYTER__CONNECT_TIMEOUT": "2s"}
    proc = subprocess.run(
        [sys.executable, "-m", "dc_jupyter.loadtest", "--scheduler", "tcp://127.0.0.1:9"],
        capture_output=True, text=True, env=env, timeout=1100, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "error: Could not reach the Dask scheduler at 'tcp://127.0.0.1:9'" in proc.stderr
    assert "Traceback" not in proc.stderr


@SLOW
def test_no_dashboard_link_when_the_scheduler_serves_none(tmp_path):
    """Dask lists a "dashboard" service even under --no-dashboard (the page is a
    404 there): the load test must not print a dead link."""
    from distributed import Client

    from dc_jupyter.tools.loadtest.run import _dashboard

    cluster = ProcessCluster(n_workers=1, scheduler_args=["--no-dashboard"], workdir=str(tmp_path))
    try:
        cluster.start_scheduler(timeout=120)  # no workers needed
        with Client(cluster.address, set_as_default=False) as client:
            assert "dashboard" in client.scheduler_info()["services"]  # what misled it
            assert _dashboard(client).startswith("none (the scheduler serves no dashboard")
    finally:
        cluster.stop()


@SLOW
def test_notebook_04_runs_and_shows_table_and_plots(tmp_path):
    source = ROOT / "notebooks" / "04-load-test.ipynb"
    nb = nbformat.read(source, as_version=4)
    # Saved without outputs, so the repository stays clean and diffs readable.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_path) if p)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    finally:
        os.environ["PYTHONPATH"] = env_path
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # over time, allocation, vs workers, vs functions, per worker, latency
    assert len(images) >= 6
    table, per_worker = [
        o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})
    ]
    assert "| mode | workers | n_functions |" in table
    assert "| jobs | 2 | 60 | 0.02 |" in table and "| map | 2 | 60 | 0.02 |" in table
    assert "| mode | workers | n_functions | duration_s | worker | calls |" in per_worker
    for name in ("loadtest.csv", "timeseries.csv", "per_worker.csv"):
        assert (tmp_path / "loadtest-results" / name).exists()


def _overlaps(spans: list[tuple[float, float]]) -> int:
    """How many calls started before the previous one (by start time) had ended."""
    spans = sorted(spans)
    return sum(1 for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1])


@SLOW
def test_one_per_worker_prevents_overlap_on_a_two_thread_worker(tmp_path):
    import dask
    from conftest import ipython_shell
    from IPython.utils.capture import capture_output

    from dc_jupyter import compute_this
    from dc_jupyter.tools.loadtest import LoadTestConfig, run_load_test
    from dc_jupyter.tools.loadtest.monitor import Monitor

    with _cluster(tmp_path, 1, nthreads=2) as cluster:

        @compute_this(address=cluster.address)
        def span(i):
            import time

            start = time.time()
            time.sleep(0.3)
            return start, time.time()

        ip = ipython_shell()
        ip.run_line_magic("load_ext", "dc_jupyter")
        with capture_output():
            shown = repr(ip.run_line_magic("distribute", f"connect {cluster.address}"))
        assert "Warning: 1 of 1 workers run more than one thread" in shown
        assert "--nthreads 1" in shown and "dc_jupyter.one-per-worker: true" in shown

        # Without the option the worker's two threads run two calls at once.
        assert _overlaps([h.result() for h in [span(i).submit() for i in range(4)]]) >= 1

        # The load test says so too, and how to start the workers.
        text = io.StringIO()
        config = LoadTestConfig(workers=[1], n_functions=[2], durations=[0.01], modes=["jobs"],
                                latency_samples=0, scheduler=cluster.address)  # fmt: skip
        run_load_test(config, Monitor(stream=text))
        assert "Warning: 1 of 1 workers run more than one thread" in text.getvalue()
        assert "--nthreads 1" in text.getvalue()

        with dask.config.set({"dc_jupyter.one-per-worker": True}):
            assert _overlaps([h.result() for h in [span(i).submit() for i in range(4)]]) == 0
            assert _overlaps(span.map(range(4)).compute()) == 0
            assert "more than one thread" not in repr(ip.run_line_magic("distribute", ""))


def test_compute_backend_local_runs_in_this_process():
    from dc_jupyter import compute_this

    # Nothing listens there: reaching for the cluster would fail, so this proves
    # the call never left the process.
    @compute_this(address="tcp://127.0.0.1:9")
    def where(x):
        import os
        import threading

        return x, os.getpid(), threading.get_ident()

    assert where(1).compute(backend="local") == (1, os.getpid(), threading.get_ident())
    assert where(2).submit(backend="local").result()[:2] == (2, os.getpid())
    with pytest.raises(ValueError, match="Unknown backend 'nowhere'"):
        where(3).compute(backend="nowhere")


@SLOW
def test_workers_started_with_the_load_test_are_waited_for(tmp_path):
    """`dask worker`s launched just before the load test have not joined yet: it waits
    for them (said on stderr) instead of stopping with "has no workers"."""
    cluster = ProcessCluster(n_workers=2, workdir=str(tmp_path / "cluster"))
    try:
        cluster.start_scheduler(timeout=120)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "dc_jupyter.loadtest", "--scheduler-file",
             str(cluster.scheduler_file), "--workers", "1,2", "--mode", "jobs", "--functions", "4",
             "--durations", "0.01", "--latency-samples", "1", "--no-plots",
             "--out", str(tmp_path / "results")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        seen = []  # workers start only once it waits: no race with its start-up
        for line in proc.stderr:
            seen.append(line)
            if "waiting up to 60 s for workers to join" in line:
                break
        cluster.add_worker()
        cluster.add_worker()
        _out, err = proc.communicate(timeout=1100)
        err = "".join(seen) + err
    finally:
        cluster.stop()
    assert proc.returncode == 0, err
    assert "(0 so far, 2 needed)" in err
    rows = list(csv.DictReader(open(tmp_path / "results" / "loadtest.csv")))
    assert [int(r["workers"]) for r in rows] == [1, 2]  # both workers, once joined
