"""binder/start: a real multi-process cluster under every notebook on Binder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs under binder/start: execute the quickstart in a real kernel, then ask
# the cluster named by DASK_SCHEDULER_ADDRESS which workers ran its tasks.
CHECK = textwrap.dedent(
    """
    import os, sys
    import nbformat
    from nbclient import NotebookClient
    from distributed import Client

    nb = nbformat.read(sys.argv[1], as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    texts = [o["data"]["text/plain"] for o in outputs if o.output_type == "execute_result"]
    print("OUTPUTS", texts)

    def ran(dask_worker):
        keys = {e[0] for e in dask_worker.state.log if isinstance(e[0], str)}
        return dask_worker.name, sorted(k.split("-")[0] for k in keys)

    with Client(os.environ["DASK_SCHEDULER_ADDRESS"], set_as_default=False) as client:
        for address, (name, prefixes) in client.run(ran).items():
            print("WORKER", name, prefixes.count("func"))
    """
)


def test_binder_start_runs_quickstart_on_its_own_workers(tmp_path):
    cluster_dir = tmp_path / "cluster"
    env = {
        **os.environ,
        "DC_JUPYTER_SCHEDULER_PORT": "0",
        "DC_JUPYTER_DASHBOARD_PORT": "0",
        "DC_JUPYTER_CLUSTER_DIR": str(cluster_dir),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    proc = subprocess.Popen(
        [str(ROOT / "binder/start"), sys.executable, "-c", CHECK,
         str(ROOT / "notebooks/01-quickstart.ipynb")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # the cluster's processes share this group: stopped below
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        # binder/start leaves the cluster running in the background (on Binder it
        # lives as long as the server); stop the whole group it started.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err
    assert "Dask cluster at tcp://127.0.0.1:" in err
    assert "'4'" in out  # func(2).compute() shown as Out[...]
    workers = dict(
        (line.split()[1], int(line.split()[2]))
        for line in out.splitlines()
        if line.startswith("WORKER")
    )
    assert set(workers) == {"binder-worker-1", "binder-worker-2"}
    # The quickstart's work ran on the workers binder/start launched.
    assert sum(workers.values()) > 0, workers
    assert (cluster_dir / "scheduler.json").exists()
