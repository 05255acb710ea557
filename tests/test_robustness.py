"""User code that exits, crashes or fails oddly, on real `dask scheduler` / `dask worker`
processes: it comes back to the notebook as itself, fails only its own item, and
never kills a worker or hangs (issue 17).

One module cluster of its own (workers get killed here). ``allowed-failures=1``:
Dask gives up on a task after it killed 2 workers (default 4), which keeps the
crash tests short.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time

import cloudpickle
import pytest
from conftest import BLOCK_PRELOAD, connected_shell, scheduler_task_count, wait_until
from IPython.utils.capture import capture_output

import dc_jupyter
from dc_jupyter import compute_this
from dc_jupyter.tools.cluster import ProcessCluster

# Functions defined here must travel by value: workers cannot import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Generous bound for "comes back at once" (these hung for more than 45 s before).
PROMPT = 30.0


@pytest.fixture(scope="module")
def rcluster(tmp_path_factory):
    c = ProcessCluster(
        n_workers=2,
        worker_args=["--preload", BLOCK_PRELOAD],
        workdir=str(tmp_path_factory.mktemp("robust")),
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"},
    )
    c.start(timeout=180)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def rclient(rcluster):
    from distributed import Client

    with Client(rcluster.address, timeout="60s", set_as_default=False) as c:
        yield c


@pytest.fixture
def steady(rclient):
    """Both workers up before; after: no task left on the scheduler."""
    rclient.wait_for_workers(2, timeout=120)
    yield
    gc.collect()
    assert wait_until(lambda: scheduler_task_count(rclient) == 0, timeout=15), (
        "tasks left on the scheduler"
    )


@pytest.fixture
def shell(ip, rcluster):
    return connected_shell(ip, rcluster.address)


def worker_pids(client) -> list[int]:
    return sorted(client.run(os.getpid).values())


# -- what user code may raise ----------------------------------------------------------


def exits(kind: str, i: int = 0):
    """Raise one of the BaseExceptions that used to kill workers."""
    if kind == "sys.exit":
        sys.exit(3)
    if kind == "SystemExit":
        raise SystemExit("bye")
    if kind == "argparse":
        import argparse

        parser = argparse.ArgumentParser(prog="tool")
        parser.add_argument("--n", type=int, required=True)
        parser.parse_args(["--n", "many"])  # prints usage, then sys.exit(2)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt("from user code")
    if kind == "GeneratorExit":
        raise GeneratorExit
    return i


EXITS = {
    "sys.exit": SystemExit,
    "SystemExit": SystemExit,
    "argparse": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
}


@pytest.mark.parametrize("kind", list(EXITS))
def test_exit_in_a_job_comes_back_as_itself_and_the_worker_lives(rclient, steady, kind):
    pids = worker_pids(rclient)
    job = compute_this(client=rclient)(exits)(kind)
    start = time.monotonic()
    with pytest.raises(EXITS[kind]) as info:
        job.compute(timeout=PROMPT)
    assert time.monotonic() - start < PROMPT
    assert type(info.value) is EXITS[kind]
    if kind == "sys.exit":
        assert info.value.code == 3
    del info
    assert worker_pids(rclient) == pids  # no worker died or restarted
    assert compute_this(client=rclient)(exits)("none", 5).compute() == 5


@pytest.mark.parametrize("kind", ["sys.exit", "KeyboardInterrupt", "GeneratorExit"])
def test_exit_in_a_map_item_fails_that_item_only(rclient, steady, kind):
    pids = worker_pids(rclient)

    @compute_this(client=rclient)
    def item(i):
        return exits(kind if i == 3 else "none", i)

    results = item.map(range(8)).compute(timeout=PROMPT, errors="return")
    assert type(results[3]) is EXITS[kind]
    assert results[:3] + results[4:] == [0, 1, 2, 4, 5, 6, 7]
    assert worker_pids(rclient) == pids


@pytest.mark.parametrize("kind", list(EXITS))
def test_exit_in_a_cell_comes_back_as_itself(shell, rclient, steady, kind):
    pids = worker_pids(rclient)
    shell.user_ns["exits"] = exits
    with capture_output(display=False):
        result = shell.run_cell(f"%%distribute\nbefore = 1\nexits({kind!r})\nafter = 2")
    assert type(result.error_in_exec) is EXITS[kind]
    assert "before" not in shell.user_ns  # a failed cell changes nothing
    assert worker_pids(rclient) == pids


def test_exit_in_a_sweep_element_comes_back_as_itself(shell, rclient, steady):
    pids = worker_pids(rclient)
    shell.user_ns["exits"] = exits
    with capture_output(display=False):
        result = shell.run_cell("%%distribute --map k in ['none', 'sys.exit', 'none']\nexits(k)")
    assert type(result.error_in_exec) is SystemExit
    assert worker_pids(rclient) == pids


# -- deep and odd exceptions ---------------------------------------------------------------


def recurse_forever(n=0):
    return recurse_forever(n + 1)


def fail_deep(depth: int):
    if depth == 0:
        raise ValueError("deep down")
    return fail_deep(depth - 1)


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickles as Unpicklable(message): fails to unpickle
        super().__init__(f"{a}/{b}")

    def __reduce__(self):
        raise TypeError("no pickling for you")


def raise_unpicklable():
    raise Unpicklable(1, 2)


@pytest.mark.parametrize(
    "call, kind, text",
    [
        (lambda: recurse_forever(), RecursionError, "maximum recursion depth"),
        (lambda: fail_deep(400), ValueError, "deep down"),
        (lambda: fail_deep(2500), ValueError, "deep down"),
        (lambda: raise_unpicklable(), RuntimeError, "Unpicklable: 1/2"),
    ],
    ids=["RecursionError", "400-deep", "2500-deep", "unpicklable"],
)
def test_deep_and_odd_exceptions_come_back_at_once(rclient, steady, call, kind, text):
    pids = worker_pids(rclient)

    @compute_this(client=rclient)
    def odd():
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(3000)  # on the worker, so 2,500 frames fit
        try:
            return call()
        finally:
            sys.setrecursionlimit(limit)

    start = time.monotonic()
    with pytest.raises(kind, match=text) as info:
        odd().compute(timeout=PROMPT)
    assert time.monotonic() - start < PROMPT
    if kind is not RuntimeError:  # hundreds of frames: truncated, and it says so
        assert any("traceback truncated" in note for note in info.value.__notes__)
    del info
    assert worker_pids(rclient) == pids


def test_a_cell_that_recurses_forever_comes_back_at_once(shell, rclient, steady):
    start = time.monotonic()
    with capture_output(display=False):
        result = shell.run_cell(
            "%%distribute\ndef down(n):\n    return down(n + 1)\ndown(0)", store_history=True
        )
    assert time.monotonic() - start < PROMPT
    assert type(result.error_in_exec) is RecursionError
    notes = getattr(result.error_in_exec, "__notes__", [])
    assert any("traceback truncated" in note for note in notes)


# -- one bad item fails one item --------------------------------------------------------


def test_a_process_dying_in_one_item_fails_that_item_only(rclient, steady):
    from dc_jupyter import WorkerCrashError

    @compute_this(client=rclient)
    def quick(i):
        if i == 15:
            os._exit(1)  # kills the worker process running the batch
        return i * 10

    handle = quick.map(range(20)).submit()
    results = handle.result(timeout=240, errors="return")
    assert isinstance(results[15], WorkerCrashError)
    assert results[:15] + results[16:] == [i * 10 for i in range(20) if i != 15]
    assert handle.counts() == {"finished": 19, "error": 1, "cancelled": 0, "pending": 0}
    del handle, results
    rclient.wait_for_workers(2, timeout=120)  # the nannies restarted them


def worker_only_value(i):
    """For item 5, an instance of a class whose module exists only on the worker."""
    if i != 5:
        return i
    import types

    module = sys.modules.get("dc_jupyter_worker_only")
    if module is None:
        module = types.ModuleType("dc_jupyter_worker_only")
        exec("class Thing:\n    pass\n", module.__dict__)
        sys.modules[module.__name__] = module
    # Pickled by reference (an importable module there), so the notebook cannot load it.
    return module.Thing()


def test_a_result_the_notebook_cannot_unpickle_fails_that_item_only(rclient, steady):
    from dc_jupyter.errors import SerializationError

    pids = worker_pids(rclient)
    results = (
        compute_this(client=rclient)(worker_only_value)
        .map(range(40))
        .compute(timeout=PROMPT, errors="return")
    )
    assert isinstance(results[5], SerializationError)
    assert "dc_jupyter_worker_only" in str(results[5])
    assert results[:5] + results[6:] == [i for i in range(40) if i != 5]
    assert worker_pids(rclient) == pids


# -- frozen workers ---------------------------------------------------------------------


@contextlib.contextmanager
def frozen_workers(rcluster, rclient):
    """SIGSTOP every worker process of our own cluster (not the nannies); SIGCONT after.

    dc_jupyter's setup on ``rclient`` is done first, as after any earlier call, so
    a test that runs alone measures its wait, not the setup (which every worker
    must answer: see test_first_contact_with_frozen_workers_is_an_error_not_a_hang).
    """
    assert compute_this(client=rclient)(slow)(0).compute(timeout=120) == 0
    pids = list(rclient.run(os.getpid).values())
    nannies = {p.pid for p in rcluster.workers}
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) in nannies, "not our worker"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def slow(i=0):
    time.sleep(0.05)
    return i


def test_first_contact_with_frozen_workers_is_an_error_not_a_hang(rcluster, rclient, steady):
    """The version check and the worker-code install ask every worker: a frozen one
    never answers, and the first call on such a cluster hung with no word."""
    import dask
    from distributed import Client

    from dc_jupyter import SchedulerUnreachableError
    from dc_jupyter.backends.dask.bounded import SILENT_AFTER

    with Client(rcluster.address, set_as_default=False) as fresh:  # not set up by dc_jupyter yet
        with frozen_workers(rcluster, rclient):
            time.sleep(SILENT_AFTER + 1)  # long enough to be named as silent
            started = time.monotonic()
            with (
                dask.config.set({"dc_jupyter.setup-timeout": "3s"}),
                pytest.raises(
                    SchedulerUnreachableError,
                    match=r"did not finish .* within 3 s.*have not answered for a while: tcp://",
                ),
            ):
                compute_this(client=fresh)(slow)().compute(timeout=2)
            assert time.monotonic() - started < 3 + 3
        # Thawed: the setup finishes in the background and work runs.
        assert compute_this(client=fresh)(slow)(3).compute(timeout=60) == 3


def test_timeout_returns_on_time_with_frozen_workers(rcluster, rclient, steady):
    job = compute_this(client=rclient)(slow)()
    with frozen_workers(rcluster, rclient):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            job.compute(timeout=2)
        took = time.monotonic() - start
    assert took < 2 + 1.5, f"compute(timeout=2) returned after {took:.1f} s"


def test_ctrl_c_returns_at_once_with_frozen_workers(rcluster, rclient, steady):
    job = compute_this(client=rclient)(slow)()
    fired: list[float] = []

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(
        1.0,
        lambda: (
            fired.append(time.monotonic()),
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT),
        ),
    )
    try:
        with frozen_workers(rcluster, rclient):
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                job.compute(timeout=60)
            took = time.monotonic() - fired[0]
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert took < 1.5, f"Ctrl-C returned after {took:.1f} s"


def test_frozen_workers_are_named_and_the_wait_is_bounded_by_the_setting(
    rcluster, rclient, steady, shell
):
    """A worker that stops answering (SIGSTOP) is named in the job widget and the
    map's text bar; with dc_jupyter.frozen-worker-timeout a .compute() and a
    %%distribute cell (and dc_jupyter.compute of several jobs) raise FrozenWorkerError
    after that long, and cancel."""
    import io

    import dask

    from dc_jupyter import FrozenWorkerError
    from dc_jupyter.ui.textbar import TextBar
    from dc_jupyter.ui.widgets import JobView

    func = compute_this(client=rclient)(slow)
    addresses = list(rclient.scheduler_info(n_workers=-1)["workers"])
    with frozen_workers(rcluster, rclient):
        shown = func().submit()
        view = JobView(shown)  # the real widget model; no front end needed to read it
        mapped = func.map(range(4)).submit()
        bar = TextBar(mapped, file=io.StringIO())
        try:
            assert wait_until(lambda: view.refresh() or "has not answered" in view.html.value, 30)
            assert wait_until(
                lambda: bar.refresh() or "has not answered" in bar.bar.fp.getvalue(), 30
            )
            text = view.text(view.state)
            assert "has not answered for" in text and "(frozen or overloaded?)" in text
            assert any(a in text for a in addresses), text
            assert not shown.done()  # without the setting, the wait is not bounded

            with dask.config.set({"dc_jupyter.frozen-worker-timeout": 3}):
                start = time.monotonic()
                with pytest.raises(FrozenWorkerError, match="has not answered for") as info:
                    func(1).compute()
                assert time.monotonic() - start < 15
                assert isinstance(info.value, TimeoutError)
                assert "frozen-worker-timeout (3 s)" in str(info.value)
                with pytest.raises(FrozenWorkerError):
                    func.map(range(2)).compute()
                with pytest.raises(FrozenWorkerError):
                    dc_jupyter.compute(func(2), func(3))
                result = shell.run_cell("%%distribute\nx = 1")
                assert isinstance(result.error_in_exec, FrozenWorkerError), result.error_in_exec
                assert "x" not in shell.user_ns
        finally:
            shown.cancel()
            mapped.cancel()
            bar.close()


def test_a_bad_frozen_worker_timeout_is_named():
    import dask

    with dask.config.set({"dc_jupyter.frozen-worker-timeout": "soon"}):
        with pytest.raises(ValueError, match="frozen-worker-timeout .*'soon'"):
            compute_this(backend="local")(slow)(1).compute()


# -- a lost scheduler -------------------------------------------------------------------


def test_a_lost_scheduler_is_one_clear_error_for_maps_and_sweeps(ip, tmp_path):
    from dc_jupyter import SchedulerUnreachableError

    c = ProcessCluster(n_workers=1, worker_args=["--preload", BLOCK_PRELOAD], workdir=str(tmp_path))
    try:
        c.start(timeout=180)
        ip.reset()
        ip.run_line_magic("distribute", f"connect {c.address}")
        ip.user_ns["slow"] = slow
        mapped = compute_this()(slow).map(range(400)).submit()
        with capture_output(display=False):
            ip.run_cell("%%distribute --async -o sweep --map k in range(400)\nslow(k)")
        sweep = ip.user_ns["sweep"]
        assert wait_until(lambda: mapped.counts()["finished"] > 0, timeout=60)
        c.scheduler.send_signal(signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(SchedulerUnreachableError, match="Lost the connection"):
            mapped.result(timeout=PROMPT)
        with pytest.raises(SchedulerUnreachableError, match="Lost the connection"):
            sweep.result(timeout=PROMPT)
        assert time.monotonic() - start < PROMPT
    finally:
        import dc_jupyter

        dc_jupyter.close()
        c.stop()


# -- cells bring back what they can ------------------------------------------------------


def test_a_cell_brings_back_what_the_notebook_can_unpickle(shell, rclient, steady):
    shell.user_ns["worker_only_value"] = worker_only_value
    with capture_output(display=False) as captured:
        result = shell.run_cell("%%distribute\nthing = worker_only_value(5)\nn = 41 + 1")
    assert result.error_in_exec is None, result.error_in_exec
    assert shell.user_ns["n"] == 42
    assert "thing" not in shell.user_ns
    assert "'thing' was not brought back" in captured.stderr
    assert "dc_jupyter_worker_only.Thing" in captured.stderr


# -- results are released -----------------------------------------------------------------


def test_computed_results_are_not_pinned_by_the_widgets(rcluster, rclient, steady, tmp_path):
    """In a real kernel (widgets shown): five big results computed and dropped
    leave nothing on the cluster."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"%load_ext dc_jupyter\n%distribute connect {rcluster.address}"),
        nbformat.v4.new_code_cell(
            "from dc_jupyter import compute_this\n"
            "@compute_this()\n"
            "def big(i):\n"
            "    return bytes(5_000_000 + i)\n"
            "sizes = [len(big(i).compute()) for i in range(5)]\n"
            "import gc; gc.collect(); sizes"
        ),
    ]
    env = {**os.environ}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=True)
    with client.setup_kernel(env=env, cwd=str(tmp_path)):
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        assert "5000004" in str(nb.cells[1].outputs)
        widgets = nb.metadata.get("widgets") or client.widget_state
        assert widgets, "no widget was shown"
        # Checked while the kernel, and the widgets in it, are still alive.
        assert wait_until(lambda: scheduler_task_count(rclient) == 0, timeout=15), (
            rclient.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))
        )


def held_results(client) -> list[str]:
    """The keys whose results the cluster still keeps in memory."""
    return client.run_on_scheduler(
        lambda dask_scheduler: [str(k) for k, ts in dask_scheduler.tasks.items() if ts.who_has]
    )


def test_async_cells_whose_handles_were_deleted_leave_no_results(
    rcluster, rclient, steady, tmp_path
):
    """In a real kernel (each cell's widget shown): 20 `--async` cells kept with -o,
    waited for, then deleted and collected, leave no result on the cluster."""
    import nbformat
    from nbclient import NotebookClient

    n = 20
    names = ", ".join(f"h{k}" for k in range(n))
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"%load_ext dc_jupyter\n%distribute connect {rcluster.address}"),
        *[
            nbformat.v4.new_code_cell(
                f"%%distribute --async -o h{k}\nv{k} = bytes(1_000_000 + {k})\nlen(v{k})"
            )
            for k in range(n)
        ],
        nbformat.v4.new_code_cell(f"for h in [{names}]:\n    h.result(timeout=120)\nlen(v{n - 1})"),
        nbformat.v4.new_code_cell(f"del h, {names}\nimport gc; gc.collect(); 'collected'"),
    ]
    env = {**os.environ}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=True)
    with client.setup_kernel(env=env, cwd=str(tmp_path)):
        for index, cell in enumerate(nb.cells[:-1]):
            client.execute_cell(cell, index)
        assert f"{1_000_000 + n - 1}" in str(nb.cells[-2].outputs)
        assert held_results(rclient), "the handles should still hold their results here"
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        assert "collected" in str(nb.cells[-1].outputs)
        # Checked while the kernel, and the widgets in it, are still alive.
        assert wait_until(lambda: not held_results(rclient), timeout=15), held_results(rclient)
