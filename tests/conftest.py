"""Shared fixtures: a real cluster of `dask scheduler` + `dask worker` processes."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

import pytest

from dc_jupyter.tools.cluster import ProcessCluster

HERE = Path(__file__).parent

# Nothing a test starts (IPython, kernels, Jupyter, Dask) may write to the real
# home: point every such directory into one temp dir before anything runs.
_HOME = Path(tempfile.mkdtemp(prefix="dc-jupyter-test-home-"))
for _var, _sub in {
    "HOME": "",
    "IPYTHONDIR": ".ipython",
    "JUPYTER_CONFIG_DIR": ".jupyter",
    "JUPYTER_DATA_DIR": ".local/share/jupyter",
    "JUPYTER_RUNTIME_DIR": ".local/share/jupyter/runtime",
    "MPLCONFIGDIR": ".config/matplotlib",
}.items():
    os.environ[_var] = str(_HOME / _sub)
os.environ.pop("DASK_SCHEDULER_ADDRESS", None)
BLOCK_PRELOAD = str(HERE / "block_dc_jupyter.py")


#: Seconds a test cluster may take to start: generous, since ~7 test runs share two
#: cores here and starting Python processes that import distributed is slow then.
START_TIMEOUT = float(os.environ.get("DC_JUPYTER_TEST_START_TIMEOUT", "240"))


@contextlib.contextmanager
def process_cluster(
    workdir, n_workers: int = 1, preload: str | None = None, extra_args=(), env=None
):
    """Every test cluster: ``dask scheduler`` + one-thread ``dask worker`` processes on
    loopback whose workers cannot import dc_jupyter (``preload``: another preload)."""
    proc_cluster = ProcessCluster(
        n_workers=n_workers,
        worker_args=["--preload", preload or BLOCK_PRELOAD, *extra_args],
        workdir=str(workdir),
        env=env,
    )
    try:
        yield proc_cluster.start(timeout=START_TIMEOUT)
    finally:
        proc_cluster.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Scheduler and two one-thread workers on loopback that cannot import dc_jupyter."""
    with process_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2) as proc_cluster:
        yield proc_cluster


@pytest.fixture(scope="session")
def client(cluster):
    """A distributed.Client on the session cluster."""
    from distributed import Client

    with Client(cluster.address, timeout="30s", set_as_default=False) as c:
        yield c


@pytest.fixture
def no_thread_leak():
    """Fail if the test leaves new dc_jupyter threads running."""
    before = {t.ident for t in threading.enumerate()}
    yield
    import time

    deadline = time.monotonic() + 5
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.is_alive() and t.name.startswith("dc_jupyter")
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture(autouse=True)
def fresh_connection():
    """Each test starts with no cluster chosen; what it opened is closed after."""
    import dc_jupyter

    dc_jupyter.close()
    yield
    dc_jupyter.close()


def scheduler_task_count(client) -> int:
    """How many tasks the scheduler still holds (orphans show up here)."""
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


@pytest.fixture(scope="module")
def ip():
    """The IPython shell with dc_jupyter loaded (one per module; see ``ipython_shell``)."""
    shell = ipython_shell()
    shell.run_line_magic("load_ext", "dc_jupyter")
    return shell


def connected_shell(ip, address: str):
    """``ip`` with an empty namespace, dc_jupyter loaded and connected to ``address``."""
    ip.reset()
    ip.run_line_magic("load_ext", "dc_jupyter")
    ip.run_line_magic("distribute", f"connect {address}")
    return ip


@pytest.fixture
def shell(ip, cluster):
    """A shell with an empty namespace whose work goes to the session cluster."""
    return connected_shell(ip, cluster.address)


def make_beating():
    """A function (sent by value) that appends a byte to ``path`` every 50 ms for
    30 s: its file shows whether the code still runs."""

    def beating(path):
        import time

        for _ in range(600):
            with open(path, "a") as fh:
                fh.write("x")
            # Short naps, not one sleep(30): the stop lands between them, so the
            # shared worker is free for the next tests (a C-level sleep runs out).
            time.sleep(0.05)
        return 1

    return beating


def kernel_env(scheduler_address: str) -> dict[str, str]:
    """The environment of a kernel that imports this checkout's dc_jupyter and
    sends its work to ``scheduler_address``."""
    import os
    from pathlib import Path

    checkout = str(Path(__file__).resolve().parent.parent)
    return {
        **os.environ,
        "DASK_SCHEDULER_ADDRESS": scheduler_address,
        "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])),
    }


def ipython_shell():
    """The one IPython shell of this test process.

    ``start_ipython()`` returns it only on its first call, and a second kind of
    shell would clash with it, so every test gets it from here.
    """
    from IPython.terminal.interactiveshell import TerminalInteractiveShell
    from IPython.testing.globalipapp import start_ipython

    return start_ipython() or TerminalInteractiveShell.instance()


def stopped_growing(path, quiet: float = 1.0, timeout: float = 20.0) -> bool:
    """True once the file at ``path`` has not grown for ``quiet`` seconds: the code
    appending to it has stopped. False if it still grows after ``timeout``."""
    import os
    import time

    def size() -> int:
        return os.path.getsize(path) if os.path.exists(path) else 0

    deadline = time.monotonic() + timeout
    last, since = size(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = size()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
