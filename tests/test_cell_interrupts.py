"""``%%distribute`` in a real kernel: an interrupt or ``--timeout`` stops the RUNNING cell.

A kernel (jupyter_client) whose ``DASK_SCHEDULER_ADDRESS`` points at a cluster of
its own with ONE one-thread worker: if the cell's code kept running there, no
other task could start, so "a new task runs at once" proves it was stopped.
``km.interrupt_kernel()`` is what the notebook's stop button sends (SIGINT).
"""

from __future__ import annotations

import gc
import os
import queue
import time

import pytest
from conftest import kernel_env, process_cluster, scheduler_task_count, wait_until
from jupyter_client.manager import KernelManager

BUSY_LOOP = "%%distribute{options}\nx = 0\nwhile True:\n    x += 1"
SHORT_SLEEPS = "%%distribute{options}\nimport time\nwhile True:\n    time.sleep(0.05)"


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """A scheduler and a single one-thread worker, for this module only."""
    with process_cluster(tmp_path_factory.mktemp("lone")) as c:
        yield c


@pytest.fixture(scope="module")
def lclient(lone):
    from distributed import Client

    with Client(lone.address, timeout="30s", set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def kernel(lone):
    """A real ipykernel with dc_jupyter loaded, sending work to ``lone``."""
    km = KernelManager(kernel_name="python3")
    env = kernel_env(lone.address)
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply, _ = execute(
            kc, "%load_ext dc_jupyter\nimport dc_jupyter\nprint(dc_jupyter.__file__)"
        )
        assert reply["status"] == "ok"
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc, code: str, interrupt_when=None, km=None, timeout: float = 60):
    """Run ``code``; return (execute_reply content, iopub messages of that request).

    With ``interrupt_when`` (a callable), interrupt the kernel once it returns
    True, as the notebook's stop button does; the time it was sent is then
    ``messages[0]["interrupted_at"]`` and the end ``messages[-1]["idle_at"]``.
    """
    msg_id = kc.execute(code)
    started = time.monotonic()
    interrupted = interrupt_when is None
    interrupted_at = None
    messages = []
    deadline = started + timeout
    while True:
        if not interrupted and interrupt_when():
            km.interrupt_kernel()
            interrupted, interrupted_at = True, time.monotonic()
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            assert time.monotonic() < deadline, f"the cell did not end within {timeout} s"
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            msg["idle_at"] = time.monotonic()
            break
    if messages:
        messages[0]["interrupted_at"] = interrupted_at
    reply = shell_reply(kc, msg_id)
    return reply["content"], messages


def shell_reply(kc, msg_id: str, timeout: float = 10) -> dict:
    """The shell channel's reply to request ``msg_id``.

    Replies to earlier requests (an extra ``kernel_info_reply`` left by
    ``wait_for_ready``, or an earlier cell's reply that came late) are stale:
    they are discarded, never taken as this request's reply.
    """
    deadline = time.monotonic() + timeout
    stale = []
    while True:
        left = deadline - time.monotonic()
        try:
            reply = kc.get_shell_msg(timeout=max(left, 0.01))
        except queue.Empty:
            raise AssertionError(
                f"no reply to {msg_id} within {timeout} s; stale replies seen: {stale}"
            ) from None
        if reply["parent_header"].get("msg_id") == msg_id:
            assert reply["msg_type"] == "execute_reply", reply["msg_type"]
            return reply
        stale.append((reply["msg_type"], reply["parent_header"].get("msg_id")))


def assert_worker_free_and_scheduler_empty(client) -> None:
    """The one worker runs a new task within ~2 s, and no task is left on the scheduler."""
    start = time.monotonic()
    assert client.submit(os.getpid, pure=False).result(timeout=3)
    took = time.monotonic() - start
    assert took < 2.5, f"the worker was busy for {took:.1f} s more"
    gc.collect()
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=5), (
        "tasks left on the scheduler"
    )


def cell_is_running(client) -> bool:
    return any(str(k).startswith("cell-") for keys in client.processing().values() for k in keys)


def running_for(client, seconds: float):
    """A condition: true once a cell has been running on the worker for ``seconds``.

    Interrupting at a fixed time after the cell started would, on a slow first
    connect (2.3 s with distributed 2024.8), interrupt the connect instead of
    the running cell this module is about.
    """
    since = None

    def check() -> bool:
        nonlocal since
        if since is None:
            since = time.monotonic() if cell_is_running(client) else None
            return False
        return time.monotonic() - since >= seconds

    return check


@pytest.mark.parametrize(
    "cell",
    [BUSY_LOOP.format(options=""), SHORT_SLEEPS.format(options=""),
     # a sweep: one element runs on the lone worker, two wait in the queue
     BUSY_LOOP.format(options=" --map i in range(3)")],
    ids=["busy-loop", "short-sleeps", "map"],
)  # fmt: skip
def test_interrupt_stops_the_running_cell_on_the_worker(kernel, lclient, cell):
    km, kc = kernel
    reply, messages = execute(kc, cell, interrupt_when=running_for(lclient, 1.0), km=km)
    ended = time.monotonic()
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    stopped_after = messages[-1]["idle_at"] - messages[0]["interrupted_at"]
    # 0.1-0.7 s on a quiet machine; on a loaded one the kernel's first traceback
    # alone (IPython scanning every module) can take seconds.
    assert stopped_after < 2, f"the cell took {stopped_after:.1f} s to stop waiting"
    assert sum(m["msg_type"] == "error" for m in messages) == 1
    assert not cell_is_running(lclient)
    assert_worker_free_and_scheduler_empty(lclient)
    assert time.monotonic() - ended < 5
    # The kernel still works, and the namespace did not get the cell's names.
    reply, messages = execute(kc, "print('x' in globals())")
    assert reply["status"] == "ok"
    assert [m["content"]["text"] for m in messages if m["msg_type"] == "stream"] == ["False\n"]


@pytest.mark.parametrize("cell", [BUSY_LOOP, SHORT_SLEEPS], ids=["busy-loop", "short-sleeps"])
def test_timeout_stops_the_running_cell_on_the_worker(kernel, lclient, cell):
    _, kc = kernel
    started = time.monotonic()
    reply, _ = execute(kc, cell.format(options=" --timeout 1"))
    assert time.monotonic() - started < 4, "the timeout did not stop the wait promptly"
    assert reply["status"] == "error" and reply["ename"] == "TimeoutError", reply
    assert "within 1 s" in reply["evalue"] and "cancelled" in reply["evalue"]
    assert_worker_free_and_scheduler_empty(lclient)
