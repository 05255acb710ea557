"""The embedded default cluster: ``dask scheduler`` and ``dask worker`` processes of our own.

Why separate processes in their own session, and not Dask's ``LocalCluster``:

- a kernel interrupt (SIGINT to the kernel's process group) reaches only the
  notebook, never the workers;
- nothing re-imports ``__main__``, so a plain script needs no
  ``if __name__ == "__main__":`` guard;
- the scheduler does not run inside the notebook process, where any client
  could reach the notebook's variables with ``run_on_scheduler``;
- every listener is TLS on loopback with certificates made for this cluster
  alone (``Security.temporary()``), so other local users cannot connect;
- their logs go to files in the cluster's directory, not into cells.

The processes end with the notebook process however it ends (see
``launcher.py``), and on ``close()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LAUNCHER = str(Path(__file__).with_name("launcher.py"))
#: Loaded by the scheduler and the workers: shorter message batching (see that file).
INTERACTIVE_PRELOAD = str(Path(__file__).with_name("interactive_preload.py"))
POLL_SECONDS = 0.05


class EmbeddedClusterError(RuntimeError):
    """The embedded cluster's processes did not start."""


class EmbeddedCluster:
    """A scheduler and ``n_workers`` one-thread workers, as processes, for this notebook only.

    A Dask cluster object: ``Client(cluster)``, ``cluster.scheduler_address``,
    ``cluster.dashboard_link``, ``cluster.security`` and ``cluster.close()``
    work as with ``LocalCluster``.
    """

    def __init__(
        self,
        n_workers: int,
        *,
        threads_per_worker: int = 1,
        host: str = "127.0.0.1",
        dashboard_address: str = "127.0.0.1:0",
        cwd: str | None = None,
        batch_interval: float | None = None,
    ) -> None:
        from distributed.core import Status
        from distributed.security import Security

        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.host = host
        self.dashboard_address = dashboard_address
        self.cwd = cwd or os.getcwd()
        self.batch_interval = batch_interval  # None: Dask's own intervals
        self.security = Security.temporary()
        # mkdtemp makes a 0700 directory: only this user reads the keys in it.
        self.directory = Path(tempfile.mkdtemp(prefix="dc-jupyter-embedded-"))
        self.name = f"dc_jupyter embedded cluster ({self.directory.name})"
        self.status = Status.created
        self.processes: list[subprocess.Popen] = []
        self._pipe_write: int | None = None
        self._scheduler_info: dict[str, Any] = {}

    # -- what Dask's Client and the magics read ---------------------------------------
    @property
    def scheduler_file(self) -> Path:
        return self.directory / "scheduler.json"

    @property
    def scheduler_address(self) -> str:
        return self._scheduler_info.get("address", "")

    @property
    def dashboard_link(self) -> str | None:
        from distributed.utils import format_dashboard_link

        port = self._scheduler_info.get("services", {}).get("dashboard")
        if port is None:
            return None
        host = self.dashboard_address.rpartition(":")[0] or self.host
        if host in ("", "0.0.0.0", "::"):
            host = self.host
        return format_dashboard_link(host, port)

    @property
    def log_files(self) -> list[Path]:
        return sorted(self.directory.glob("*.log"))

    def __await__(self):  # Client awaits its cluster "to be sure it started": it has
        if False:
            yield
        return self

    def __repr__(self) -> str:
        return (
            f"EmbeddedCluster({self.scheduler_address!r}, workers={self.n_workers}, "
            f"threads_per_worker={self.threads_per_worker}, status={self.status.name})"
        )

    def _repr_html_(self) -> str:
        import html

        link = self.dashboard_link or ""
        return (
            f"<div><b>{html.escape(self.name)}</b><br>scheduler: "
            f"{html.escape(self.scheduler_address)}<br>workers: {self.n_workers}, "
            f"{self.threads_per_worker} thread(s) each<br>dashboard: "
            f'<a href="{html.escape(link)}" target="_blank">{html.escape(link)}</a><br>'
            f"logs: {html.escape(str(self.directory))}</div>"
        )

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, interrupted: threading.Event | None = None, timeout: float = 60) -> None:
        """Start the scheduler and the workers; return when the scheduler listens."""
        from distributed.core import Status

        if interrupted is not None and interrupted.is_set():
            raise KeyboardInterrupt
        self.status = Status.starting
        tls = self._write_credentials()
        read_end, self._pipe_write = os.pipe()
        try:
            env = self._child_env(read_end)
            scheduler_args = [
                "--host", self.host, "--port", "0", "--protocol", "tls",
                "--dashboard-address", self.dashboard_address,
                "--scheduler-file", str(self.scheduler_file), *tls, *self._preload(),
            ]  # fmt: skip
            # The workers wait for the scheduler file themselves: start both at once.
            worker_args = [
                "--scheduler-file", str(self.scheduler_file),
                "--nworkers", str(self.n_workers), "--nthreads", str(self.threads_per_worker),
                "--host", self.host, "--no-dashboard",
                # Dask serves worker metrics over HTTP even without a dashboard:
                "--dashboard-address", f"{self.host}:0",
                "--local-directory", str(self.directory / "workers"),
                "--name", "embedded", *tls, *self._preload(),
            ]  # fmt: skip
            # If the notebook dies without closing us, the scheduler and the workers'
            # launcher remove the directory on their way out: whichever ends last
            # (a nanny may still write scratch files after the scheduler is gone).
            remove = {"DC_JUPYTER_REMOVE_ON_PARENT_EXIT": str(self.directory)}
            scheduler_env = {**env, **remove}
            self._spawn("scheduler", scheduler_args, scheduler_env, str(self.directory), read_end)
            worker_env = {**_worker_env(env), **remove}
            self._spawn("worker", worker_args, worker_env, cwd=self.cwd, fd=read_end)
        finally:
            os.close(read_end)  # the children hold it now
        deadline = time.monotonic() + timeout
        while not self._read_scheduler_file():
            self._check_alive(interrupted, deadline, "the scheduler to listen")
            time.sleep(POLL_SECONDS)
        self.status = Status.running

    def wait_until_workers_joined(
        self, client: Any, interrupted: threading.Event | None = None, timeout: float = 60
    ) -> None:
        """Return when all workers joined; raise if a process died, or on Ctrl-C."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(interrupted, deadline, f"{self.n_workers} workers to join")
            try:
                client.wait_for_workers(self.n_workers, timeout=0.25)
                return
            except TimeoutError:  # (Dask's WorkerStartTimeoutError): check and wait on
                pass

    def close(self, timeout: float = 3.0) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the cluster's directory."""
        from distributed.core import Status

        self.status = Status.closing
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM if timeout > 0 else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.processes:
            _signal_group(proc, signal.SIGKILL)  # the group: a nanny's workers too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        if self._pipe_write is not None:
            os.close(self._pipe_write)
            self._pipe_write = None
        shutil.rmtree(self.directory, ignore_errors=True)
        self.status = Status.closed

    def logs(self, lines: int = 20) -> str:
        """The last ``lines`` lines of each log file, with where the files are."""
        parts = [f"Logs of the embedded cluster in {self.directory}:"]
        for path in self.log_files:
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError as exc:
                text = [f"(cannot read: {exc})"]
            parts.append(f"== {path.name} (last {min(lines, len(text))} of {len(text)} lines) ==")
            parts.extend(text[-lines:] if lines > 0 else [])
        return "\n".join(parts)

    # -- helpers ------------------------------------------------------------------------
    def _write_credentials(self) -> list[str]:
        """Write the temporary certificate and key (0600, in our 0700 directory)."""
        tls_dir = self.directory / "tls"
        tls_dir.mkdir(mode=0o700)
        files = {
            "ca.pem": self.security.tls_ca_file,
            "cert.pem": self.security.tls_worker_cert,
            "key.pem": self.security.tls_worker_key,
        }
        for name, text in files.items():
            fd = os.open(tls_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        return [
            "--tls-ca-file", str(tls_dir / "ca.pem"),
            "--tls-cert", str(tls_dir / "cert.pem"),
            "--tls-key", str(tls_dir / "key.pem"),
        ]  # fmt: skip

    def _preload(self) -> list[str]:
        return [] if self.batch_interval is None else ["--preload", INTERACTIVE_PRELOAD]

    def _child_env(self, read_end: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        if self.batch_interval is not None:
            env["DC_JUPYTER_BATCH_INTERVAL"] = repr(self.batch_interval)
        env["DC_JUPYTER_PARENT_FD"] = str(read_end)
        env["DC_JUPYTER_SYS_PATH"] = os.pathsep.join(p or self.cwd for p in sys.path)
        # PR_SET_PDEATHSIG follows the thread that forks: only the main thread
        # lives as long as the process.
        on_main = threading.current_thread() is threading.main_thread()
        env["DC_JUPYTER_PDEATHSIG"] = "1" if on_main else "0"
        return env

    def _spawn(self, command: str, args: list[str], env: dict, cwd: str, fd: int) -> None:
        with open(self.directory / f"{command}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, LAUNCHER, command, *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, pass_fds=(fd,),
                start_new_session=True,  # out of the kernel's process group: no SIGINT
            )  # fmt: skip
        self.processes.append(proc)

    def _read_scheduler_file(self) -> bool:
        try:
            info = json.loads(self.scheduler_file.read_text())
        except (OSError, ValueError):
            return False
        if not info.get("address"):
            return False
        self._scheduler_info = info
        return True

    def _check_alive(self, interrupted: threading.Event | None, deadline: float, what: str) -> None:
        if interrupted is not None and interrupted.is_set():
            raise KeyboardInterrupt
        for proc in self.processes:
            if proc.poll() is not None:
                raise EmbeddedClusterError(
                    f"The embedded Dask cluster did not start: a process exited with code "
                    f"{proc.returncode}.\n{self.logs(15)}"
                )
        if time.monotonic() > deadline:
            raise EmbeddedClusterError(
                f"The embedded Dask cluster did not start: waited too long for {what}.\n"
                f"{self.logs(15)}"
            )


def _worker_env(env: dict[str, str]) -> dict[str, str]:
    """Fork the worker processes from one that imported Dask once (much faster than
    spawning each), with the variables Dask's nanny would set before spawning."""
    import dask.config

    env = dict(env)
    env["DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"] = "forkserver"
    pre_spawn = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    for key, value in pre_spawn.items():
        env.setdefault(key, str(value))
    env.setdefault("PYTHONHASHSEED", "6640")  # as the nanny does: same hashes on every worker
    return env


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None and sig != signal.SIGKILL:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the session/group start_new_session made


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[threading.Event]:
    """Inside, Ctrl-C (SIGINT) sets the yielded event instead of raising at a random line.

    Start-up polls the event and cleans up before raising ``KeyboardInterrupt``,
    so an interrupt never leaves half a cluster (or a half-made client). Only
    the main thread receives signals; elsewhere the event is never set.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def start(
    n_workers: int,
    make_client: Callable[[EmbeddedCluster], Any],
    timeout: float = 120,
    **options: Any,
) -> tuple[EmbeddedCluster, Any]:
    """Start an embedded cluster and a client for it; on any failure or Ctrl-C, nothing is left."""
    client = None
    with ctrl_c_deferred() as interrupted:  # cleaning up is not interrupted either
        cluster = EmbeddedCluster(n_workers, **options)
        try:
            deadline = time.monotonic() + timeout
            cluster.start(interrupted, timeout)
            client = make_client(cluster)
            cluster.wait_until_workers_joined(
                client, interrupted, max(1.0, deadline - time.monotonic())
            )
            if interrupted.is_set():
                raise KeyboardInterrupt
        except BaseException:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close(timeout=2)
            cluster.close(timeout=0)  # nothing worth a clean shutdown yet
            raise
    return cluster, client
