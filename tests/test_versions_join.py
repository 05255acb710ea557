"""Versions are checked as workers join (issue 17): a `dask worker` with another
cloudpickle that joins after the first job gets no dc_jupyter work, the user is
told which worker it is, and the work goes on on the matching worker.

Real processes: the late worker runs in an environment of its own with
cloudpickle 3.0.0 and this environment's dask and distributed (``uv``, from its
cache). Where that environment cannot be made (no ``uv``, no network and no
cache), the worker instead reports another cloudpickle version through
``fake_versions_preload.py`` (a stand-in, said so in the test's output).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import warnings

import cloudpickle
from conftest import BLOCK_PRELOAD, HERE, process_cluster, wait_until

import dc_jupyter
from dc_jupyter import MismatchedWorkerWarning, compute_this
from dc_jupyter.backends.dask.versions import GATE_TOPIC

cloudpickle.register_pickle_by_value(sys.modules[__name__])

OTHER_CLOUDPICKLE = "3.0.0"


def where(i=0):
    from distributed import get_worker

    return get_worker().address


def other_environment(path) -> list[str] | None:
    """The ``dask`` command of a new environment with cloudpickle 3.0.0, or None."""
    uv = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
    if uv is None or importlib.metadata.version("cloudpickle") == OTHER_CLOUDPICKLE:
        return None
    pins = [
        f"cloudpickle=={OTHER_CLOUDPICKLE}",
        f"dask=={importlib.metadata.version('dask')}",
        f"distributed=={importlib.metadata.version('distributed')}",
    ]
    venv = str(path / "other-venv")
    env = {**os.environ, "VIRTUAL_ENV": venv}
    try:
        subprocess.run([uv, "venv", "-q", "-p", sys.executable, venv], check=True, timeout=120)
        for offline in (["--offline"], []):  # the cache first; the network if it must
            done = subprocess.run(
                [uv, "pip", "install", "-q", *offline, *pins],
                env=env, timeout=300, capture_output=True,
            )  # fmt: skip
            if done.returncode == 0:
                return [os.path.join(venv, "bin", "dask")]
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def test_a_late_worker_with_other_versions_gets_no_work_and_is_named(tmp_path):
    other = other_environment(tmp_path)
    if other is None:
        print("no environment with another cloudpickle: the late worker fakes its versions")
        extra, env = (
            ["--preload", str(HERE / "fake_versions_preload.py")],
            {"DC_JUPYTER_FAKE_VERSIONS": f"cloudpickle={OTHER_CLOUDPICKLE}"},
        )
    else:
        extra, env = [], {}
    with process_cluster(tmp_path / "cluster", n_workers=1, env=env) as cluster:
        client = dc_jupyter.connect(cluster.address)
        func = compute_this()(where)
        good = func().compute()  # the first job: dc_jupyter's plugins are on the cluster

        # BLOCK_PRELOAD again (the preload of the first worker): it cannot import dc_jupyter.
        cluster.add_worker(
            *(extra or ["--preload", BLOCK_PRELOAD]), name="old-cloudpickle", dask=other
        )
        client.wait_for_workers(2, timeout=240)
        info = client.scheduler_info(n_workers=-1)["workers"]
        late = next(a for a, w in info.items() if w.get("name") == "old-cloudpickle")
        assert wait_until(lambda: client.get_events(GATE_TOPIC), timeout=30)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert wait_until(lambda: func().compute() and _warned(caught), timeout=30)
            ran = [func(i).compute() for i in range(6)]
            ran += func.map(range(40)).compute()
            ran += dc_jupyter.compute(*[func(i) for i in range(4)])
        assert set(ran) == {good}, f"work ran on {set(ran) - {good}}, the mismatched worker"
        told = _warned(caught)
        assert len(told) == 1, told  # once per worker
        text = str(told[0].message)
        assert late in text and "old-cloudpickle" in text
        mine = importlib.metadata.version("cloudpickle")
        assert f"cloudpickle {OTHER_CLOUDPICKLE} there, {mine} here" in text
        assert "dc_jupyter requirements" in text

        # Work sent while only the mismatched worker is left waits, and runs on a
        # matching worker that joins later (Dask does not hand it to the other).
        cluster.workers[0].terminate()
        assert wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=60)
        handle = func(99).submit()
        cluster.add_worker("--preload", BLOCK_PRELOAD, name="matching")
        again = handle.result(timeout=240)
        assert again != late


def _warned(caught) -> list:
    return [w for w in caught if issubclass(w.category, MismatchedWorkerWarning)]
