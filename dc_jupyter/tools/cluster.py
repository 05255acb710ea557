"""Start and stop real ``dask scheduler`` / ``dask worker`` processes on this machine.

Used by the load test, the benchmarks and the tests, which all want a cluster
of separate processes exactly as on real nodes. Not a deployment tool: on real
machines run ``dask scheduler`` and ``dask worker`` yourself (see the README).
Processes are stopped by PID, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _dask_command() -> list[str]:
    exe = shutil.which("dask")
    # Prefer the interpreter's own `dask` (a venv may not be on PATH).
    local = Path(sys.executable).with_name("dask")
    if local.exists():
        return [str(local)]
    if exe:
        return [exe]
    return [sys.executable, "-m", "dask"]


class ProcessCluster:
    """A scheduler and workers as child processes, on 127.0.0.1 by default.

    Examples
    --------
    >>> with ProcessCluster(n_workers=2) as cluster:  # doctest: +SKIP
    ...     print(cluster.address)
    """

    def __init__(
        self,
        n_workers: int = 2,
        *,
        nthreads: int = 1,
        host: str = "127.0.0.1",
        worker_args: Sequence[str] = (),
        scheduler_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        log_dir: str | None = None,
    ) -> None:
        self.n_workers = n_workers
        self.nthreads = nthreads
        self.host = host
        self.worker_args = list(worker_args)
        self.scheduler_args = list(scheduler_args)
        self.env = {**os.environ, **(env or {})}
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="dc-jupyter-cluster-"))
        self.log_dir = Path(log_dir) if log_dir else self.workdir
        self.scheduler_file = self.workdir / "scheduler.json"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout: float = 300) -> ProcessCluster:
        """Start the scheduler and workers; on any failure stop what was started."""
        try:
            self.start_scheduler(timeout)
            for _ in range(self.n_workers):
                self.add_worker()
            self.wait_for_workers(self.n_workers, timeout)
        except BaseException:
            # A fixture whose start fails never reaches stop(): without this the
            # processes started so far were left running (seen under load).
            self.stop()
            raise
        return self

    def start_scheduler(self, timeout: float = 300, port: int = 0) -> None:
        if self.scheduler_file.exists():
            self.scheduler_file.unlink()
        cmd = [
            *_dask_command(), "scheduler",
            "--host", self.host, "--port", str(port),
            "--dashboard-address", f"{self.host}:0",
            "--scheduler-file", str(self.scheduler_file),
            *self.scheduler_args,
        ]  # fmt: skip
        self.scheduler = self._spawn(cmd, "scheduler")
        deadline = time.monotonic() + timeout
        while not self._scheduler_file_ready():
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited; see {self.log_dir}/scheduler.log")
            if time.monotonic() > deadline:
                raise TimeoutError("dask scheduler did not start in time")
            time.sleep(0.05)

    def _scheduler_file_ready(self) -> bool:
        try:
            return bool(json.loads(self.scheduler_file.read_text()).get("address"))
        except (OSError, ValueError):
            return False

    def add_worker(
        self, *extra: str, name: str | None = None, dask: Sequence[str] | None = None
    ) -> subprocess.Popen:
        """Start one more ``dask worker`` process and return it (not waiting for it).

        ``dask``: the ``dask`` command to run (e.g. another environment's), else ours.
        """
        index = len(self.workers)
        cmd = [
            *(dask or _dask_command()), "worker",
            "--scheduler-file", str(self.scheduler_file),
            "--nworkers", "1", "--nthreads", str(self.nthreads),
            "--host", self.host, "--no-dashboard",
            # Dask serves worker metrics over HTTP even without a dashboard:
            # on this host only, not on every interface.
            "--dashboard-address", f"{self.host}:0",
            "--name", name or f"worker-{index}",
            "--local-directory", str(self.workdir / f"worker-{index}"),
            *self.worker_args, *extra,
        ]  # fmt: skip
        proc = self._spawn(cmd, f"worker-{index}")
        self.workers.append(proc)
        return proc

    def _spawn(self, cmd: list[str], label: str) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{label}.log", "ab")
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
            start_new_session=True,
        )  # fmt: skip

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def wait_for_workers(self, n: int, timeout: float = 300) -> None:
        from dc_jupyter.backends.dask.connection import new_client

        with new_client(scheduler_file=str(self.scheduler_file), timeout="30s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        """Stop workers, then the scheduler (SIGTERM, then SIGKILL after a few seconds)."""
        if self._scheduler_file_ready():
            from dc_jupyter.backends.dask import connection

            # Close our own client first, or it keeps trying to reconnect and logs errors.
            connection.forget(self.address)
        for proc in self.workers:
            _signal_group(proc, signal.SIGTERM)
        for proc in self.workers:
            _reap(proc)
        if self.scheduler is not None:
            _signal_group(self.scheduler, signal.SIGTERM)
            _reap(self.scheduler)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ProcessCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)  # the group we created with start_new_session
    except ProcessLookupError:
        pass


def _reap(proc: subprocess.Popen, grace: float = 5) -> None:
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=grace)
