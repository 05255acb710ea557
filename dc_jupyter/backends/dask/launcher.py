"""Run ``dask scheduler`` or ``dask worker`` for the embedded cluster, tied to its parent.

Started as a script (``python launcher.py scheduler|worker ARGS...``) by
``embedded.EmbeddedCluster``, never imported by dc_jupyter itself: standard
library and distributed only. Before Dask starts, it makes sure the process
ends when the notebook process ends, however that ends (normal exit, kernel
restart, SIGKILL):

- a thread blocks on the read end of a pipe whose write end only the notebook
  process holds (``DC_JUPYTER_PARENT_FD``); end of file means the notebook is
  gone;
- ``PR_SET_PDEATHSIG`` as a second line, when the notebook asked for it (only
  safe when the notebook started us from its main thread: the signal follows
  the thread that forked, not the process). It sends SIGUSR1, not SIGTERM, so
  that we know why we are stopping.

Either way ``_parent_died`` runs once: it removes the cluster's directory, asks
Dask to shut down with ONE SIGTERM (Dask restores the default handler after
the first, so a second would kill us mid-cleanup), and exits for sure soon after.

A nanny's worker process follows its nanny on its own (Dask's parent pipe).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import threading
import time

GRACE_SECONDS = 5.0  # after SIGTERM, how long Dask gets to close cleanly


def _remove_leftovers() -> None:
    # Nobody is left to remove the cluster's directory (keys, logs): do it here.
    leftover = os.environ.get("DC_JUPYTER_REMOVE_ON_PARENT_EXIT")
    if leftover:
        shutil.rmtree(leftover, ignore_errors=True)


_parent_gone = threading.Event()
_once = threading.RLock()  # re-entrant: the signal handler runs on the main thread


def _parent_died() -> None:
    """The notebook process is gone: clean up and let Dask close, once."""
    with _once:
        if _parent_gone.is_set():
            return
        _parent_gone.set()
    _remove_leftovers()
    os.kill(os.getpid(), signal.SIGTERM)  # Dask's own handler: a clean close
    threading.Thread(target=_exit_after_grace, name="dc_jupyter-exit", daemon=True).start()


def _exit_after_grace() -> None:
    time.sleep(GRACE_SECONDS)
    os._exit(1)


def _watch_parent_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    _parent_died()


def _set_parent_death_signal() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGUSR1), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe alone does it
        pass


def _use_parent_sys_path() -> None:
    # sys.path[0] is this file's folder, whose module names (errors, versions,
    # ...) would shadow top-level ones: use the notebook's path instead, so the
    # workers import what the notebook imports (as LocalCluster's spawned
    # workers did).
    parent_path = os.environ.get("DC_JUPYTER_SYS_PATH")
    if parent_path is not None:
        sys.path[:] = parent_path.split(os.pathsep)
    elif sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]


def main() -> None:
    """Tie this process to the notebook, then run the Dask command in ``sys.argv[1]``."""
    # A nanny may still write scratch files after the first removal: remove
    # the leftovers on the way out too, when the notebook is gone.
    atexit.register(lambda: _parent_gone.is_set() and _remove_leftovers())
    if os.environ.get("DC_JUPYTER_PDEATHSIG") == "1":
        signal.signal(signal.SIGUSR1, lambda *_: _parent_died())
        _set_parent_death_signal()
    fd = os.environ.get("DC_JUPYTER_PARENT_FD")
    if fd is not None:
        threading.Thread(
            target=_watch_parent_pipe, args=(int(fd),), name="dc_jupyter-parent-watch", daemon=True
        ).start()
    _use_parent_sys_path()
    command, args = sys.argv[1], sys.argv[2:]
    if command == "scheduler":
        from distributed.cli.dask_scheduler import main as dask_main
    elif command == "worker":
        from distributed.cli.dask_worker import main as dask_main
    else:
        raise SystemExit(f"launcher: unknown command {command!r}")
    dask_main.main(args=args, prog_name=f"dask {command}")


if __name__ == "__main__":  # a nanny's spawned worker re-imports this file: do nothing then
    main()
