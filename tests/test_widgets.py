"""Live widgets: saved state in a real kernel, text fallbacks, traffic, tqdm on a TTY."""

from __future__ import annotations

import fcntl
import html
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
from conftest import wait_until
from nbclient import NotebookClient

import dc_jupyter
from dc_jupyter import compute_this

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

SETUP = """
import time
from dc_jupyter import compute_this

@compute_this
def square(x):
    time.sleep(0.05)
    return x * x

@compute_this
def boom(x):
    raise ValueError(f"bad input {x}")
"""

CELLS = {
    "job": "square(4).compute()",
    "map": "len(square.map(range(12)).compute())",
    "failed": "try:\n    boom(1).compute()\nexcept ValueError:\n    pass",
    "done handle": "fut = square(5).submit()\nfut.result()\nfut",
    "live map handle": "mf = square.map(range(6)).submit()\nmf",
    # No sleep: the displayed handle's final state is drawn by the end of this cell.
    "wait": "len(mf.result())",
    "partly failed": "try:\n    boom.map(range(3)).compute()\nexcept ValueError:\n    pass",
    # %%distribute in each form
    "load": "%load_ext dc_jupyter",
    "cell": "%%distribute\nimport time\ntime.sleep(0.3)\nanswer = 6 * 7\nanswer",
    "async cell": "%%distribute --async -o h\nimport time\ntime.sleep(0.5)\nlate = 'yes'\nlate",
    "wait cell": "h.result()\nlate",
    "sweep": "%%distribute --map i in range(6)\nsquared = i * i",
}


def run_notebook(tmp_path, cells: list[str], env: dict) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path = tmp_path / "widgets.ipynb"
    nbformat.write(nb, path)
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env={**os.environ, **env})
    nbformat.write(nb, path)
    return nb


def final(cell) -> dict:
    """The data of the cell's one dc_jupyter output, which must be static by now:
    HTML and text, no widget view (that needs the widget manager to render)."""
    shown = [o for o in cell.outputs if "dcj-" in o.get("data", {}).get("text/html", "")]
    assert len(shown) == 1, f"expected one dc_jupyter output in {cell.source!r}: {cell.outputs}"
    data = shown[0]["data"]
    assert WIDGET_VIEW not in data, f"still a live widget after the cell: {cell.source!r}"
    return {"text/plain": data["text/plain"], "text/html": html.unescape(data["text/html"])}


def test_notebook_keeps_final_state_as_static_html(tmp_path, cluster):
    nb = run_notebook(
        tmp_path, [SETUP, *CELLS.values()], {"DASK_SCHEDULER_ADDRESS": cluster.address}
    )
    cells = dict(zip(CELLS, nb.cells[1:], strict=True))
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

    job = final(cells["job"])
    assert "data-state='finished'" in job["text/html"] and "→ 16" in job["text/html"]
    assert "dashboard" in job["text/html"]  # link to the Dask dashboard of the cluster
    assert job["text/plain"].startswith("square: finished")

    mapped = final(cells["map"])
    assert mapped["text/plain"].startswith("square.map: finished, 12/12 done")
    assert "aria-valuenow='12'" in mapped["text/html"]
    assert "aria-valuemax='12'" in mapped["text/html"]

    failed = final(cells["failed"])
    assert "data-state='failed'" in failed["text/html"]
    assert "ValueError: bad input 1" in failed["text/html"]
    assert "ValueError: bad input 1" in failed["text/plain"]

    assert "→ 25" in final(cells["done handle"])["text/html"]

    # A displayed handle, finished while a later cell waited on it: drawn final
    # by the end of that cell (no sleep, no stale "queued").
    live = final(cells["live map handle"])
    assert live["text/plain"].startswith("square.map: finished, 6/6 done"), live
    assert "Cancel" not in live["text/html"]

    partly = final(cells["partly failed"])
    assert partly["text/plain"].startswith("boom.map: failed, 0/3 done · failed 3")
    assert "/s" not in partly["text/plain"]  # failures are not a rate

    # %%distribute, sync: the job card, labelled with the cell, shows its value
    count = cells["cell"].execution_count
    cell = final(cells["cell"])
    assert f"In[{count}] %%distribute" in cell["text/html"]
    assert "data-state='finished'" in cell["text/html"] and "→ 42" in cell["text/html"]
    assert cell["text/plain"].startswith(f"In[{count}] %%distribute: finished")
    assert any(o.get("data", {}).get("text/plain") == "42" for o in cells["cell"].outputs)

    # --async: the displayed handle, drawn final by the end of the cell that waited
    count = cells["async cell"].execution_count
    handle = final(cells["async cell"])
    assert f"In[{count}] %%distribute" in handle["text/html"]
    assert "data-state='finished'" in handle["text/html"] and "→ 'yes'" in handle["text/html"]
    assert cells["wait cell"].outputs[-1]["data"]["text/plain"] == "'yes'"

    # --map: the sweep's bar at total, labelled with the cell
    count = cells["sweep"].execution_count
    sweep = final(cells["sweep"])
    assert sweep["text/plain"].startswith(f"In[{count}] %%distribute --map i: finished, 6/6 done")
    assert "aria-valuenow='6'" in sweep["text/html"]

    # Nothing in the saved notebook needs the widget manager to show a final state.
    views = [o for c in nb.cells for o in c.outputs if WIDGET_VIEW in o.get("data", {})]
    assert not views, views


def nap_running(dask_client) -> bool:
    """Whether the session cluster still runs (or queues) some of ``nap.map``."""
    return dask_client.run_on_scheduler(
        lambda dask_scheduler: any(
            str(key).startswith("nap-") and ts.state not in ("memory", "released", "forgotten")
            for key, ts in dask_scheduler.tasks.items()
        )
    )


def test_a_handle_that_ends_between_cells_is_drawn_final_by_the_next_cell(
    tmp_path, cluster, client
):
    # A pause between cells, as when a person reads before running the next one:
    # the job ends while no cell runs, so the monitor thread draws it, as part of
    # the cell that displayed it, which has ended (nbclient no longer listens to it).
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(source)
        for source in (SETUP, "h = nap.map(range(2)).submit()\nh", "1 + 1")
    ]
    nb.cells[0].source += "\n@compute_this\ndef nap(x):\n    time.sleep(1)\n    return x\n"
    runner = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with runner.setup_kernel(env={**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.address}):
        runner.execute_cell(nb.cells[0], 0)
        runner.execute_cell(nb.cells[1], 1)
        time.sleep(2.5)  # the two 1 s calls end in this pause (waited for on a slow machine)
        assert wait_until(lambda: not nap_running(client), timeout=60)
        time.sleep(1.0)  # ~10 monitor ticks: it has drawn the final state by now
        runner.execute_cell(nb.cells[2], 2)
    handle = final(nb.cells[1])
    assert handle["text/plain"].startswith("nap.map: finished, 2/2 done"), handle


# -- in this process: traffic, threads, fallbacks ----------------------------------


def test_work_still_running_when_the_kernel_stops_says_so(tmp_path, cluster):
    """A displayed handle whose work outlives the kernel: its output ends as a static
    "not finished when the kernel stopped", not as its last live state."""
    import queue

    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(
        cwd=str(tmp_path), env={**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.address}
    )
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive(
            SETUP + "handle = square.map(range(1000)).submit()\nhandle", timeout=120
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        km.shutdown_kernel(now=False)  # as File > Shut Down Kernel does
        updates, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline and not updates:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["msg_type"] == "update_display_data":
                updates.append(msg["content"]["data"])
        assert updates, "no final update of the live view before the kernel ended"
        assert "not finished when the kernel stopped" in updates[-1]["text/plain"]
        assert WIDGET_VIEW not in updates[-1] and "dcj-" in updates[-1]["text/html"]
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


@pytest.fixture
def comm_messages():
    """Count the comm messages widgets send.

    There is no front end in this process, so ipywidgets' comm is the ``comm``
    package's DummyComm (what it uses outside a kernel) plus a counter.
    """
    from dc_jupyter.tools.widget_traffic import counting_comms

    with counting_comms() as sent:
        yield sent


#: Widget values a map view can change in one refresh (title, bar, style, counts, workers).
PER_REFRESH = 6
#: The promised pace (README: about ten updates a second), not the code's own constant.
REFRESH_SECONDS = 0.1


def test_widget_traffic_grows_with_time_not_items(cluster, no_thread_leak, capsys):
    """A real batched map on the session cluster, watched by a live MapView whose
    comms count what they send (``widget_traffic.counting_comms``)."""
    from dc_jupyter.tools.widget_traffic import count_updates

    dc_jupyter.connect(cluster.address)
    small = count_updates(10, delay=0.15)  # ~0.8 s on two workers
    large = count_updates(200_000)  # batched: well under a second here
    with capsys.disabled():
        for t in (small, large):
            print(f"\n{t.items:,} items in {t.tasks} tasks, {t.seconds:.2f} s: "
                  f"{t.updates} widget updates ({t.bar_updates} of the bar)")  # fmt: skip
    for t in (small, large):
        refreshes = t.seconds / REFRESH_SECONDS + 3  # ~10 a second, the first, the final
        assert t.bar_updates <= refreshes, t
        assert t.updates <= PER_REFRESH * refreshes, t
    assert small.bar_updates >= 4  # it did move while waiting
    # Discriminating: the large map went out in more tasks than the monitor can
    # refresh in its time, so a bar update per task (let alone per item) would
    # have broken the bound above.
    assert large.tasks > large.seconds / REFRESH_SECONDS + 3, large


def test_job_view_turns_red_and_stops_its_thread(no_thread_leak, comm_messages):
    from dc_jupyter.ui import widgets

    @compute_this(backend=ThreadPoolExecutor(1))
    def fail(x):
        time.sleep(0.3)
        raise KeyError(x)

    handle = fail("k").submit()
    view = widgets.show(handle)  # a displayed handle: refreshed by the monitor alone
    assert view.state.state in ("queued", "running")
    assert view.cancel_button.layout.display != "none"
    assert wait_until(lambda: view.finished, timeout=10)
    assert view.state.state == "failed" and view.state.detail == "KeyError: 'k'"
    assert "data-state='failed'" in view.html.value and "✗" in view.html.value
    assert view.cancel_button.layout.display == "none"


def test_cancel_button_cancels_the_remote_task(cluster, client, no_thread_leak, comm_messages):
    from dc_jupyter.ui import widgets

    dc_jupyter.connect(cluster.address)

    @compute_this
    def sleepy(seconds):
        for _ in range(int(seconds / 0.05)):  # short naps: the cancel stops it on the worker
            time.sleep(0.05)
        return seconds

    handle = sleepy(60).submit()
    view = widgets.show(handle)
    assert wait_until(lambda: view.state.state == "running", timeout=10)
    workers = client.scheduler_info()["workers"].values()  # running on which worker, by name
    assert view.state.worker in {str(w.get("name", w["id"])) for w in workers}
    view.cancel_button.click()  # what a click in the browser runs in the kernel
    assert wait_until(lambda: view.finished, timeout=10)
    assert view.state.state == "cancelled"
    assert wait_until(
        lambda: (
            not any(str(k).startswith("sleepy-") for w in client.processing().values() for k in w)
        ),
        timeout=10,
    ), "the task still runs on the cluster"


def test_terminal_ipython_shows_text_not_widgets(no_thread_leak):
    from conftest import ipython_shell
    from IPython.utils.capture import capture_output

    shell = ipython_shell()  # the magic tests' shell: a second kind would clash
    shell.user_ns["compute_this"] = compute_this
    with capture_output() as captured:
        result = shell.run_cell(
            "@compute_this(backend='local')\ndef double(x):\n    return 2 * x\n"
            "print(double(21).compute())\nfut = double(4).submit()\nfut"
        )
    assert result.error_in_exec is None
    assert "42" in captured.stdout
    # what the terminal prints as text/plain (the shell is shared with earlier tests,
    # whose displayed handles may draw their final state at the end of this cell)
    (shown,) = [o.data for o in captured.outputs if o.data["text/plain"].startswith("double")]
    assert "application/vnd.jupyter.widget-view+json" not in shown
    assert shown["text/plain"] == "double: finished, 0.0 s → 8"
    with capture_output() as captured:
        shell.run_cell("double(3)")
    assert "<Job double(3) not sent>" in captured.stdout  # showing a lazy job sends nothing


def test_lazy_job_card_says_not_sent():
    @compute_this(backend="local")
    def add(a, b=0):
        return a + b

    card = add(1, b="x" * 100)._repr_html_()
    assert "<b>add</b>" in card and "not sent" in card and "..." in card


# -- scripts: tqdm on a TTY, nothing otherwise ---------------------------------------

SCRIPT = textwrap.dedent(
    """
    import time
    from concurrent.futures import ThreadPoolExecutor
    from dc_jupyter import compute_this

    @compute_this(backend=ThreadPoolExecutor(2))
    def slow(x):
        time.sleep(0.03)
        return x

    print("results", len(slow.map(range(40)).compute()), flush=True)
    print("job", slow(1).compute(), flush=True)
    """
)


def test_script_map_draws_tqdm_bar_on_a_tty_only():
    env = {**os.environ, "COLUMNS": "100"}
    # not a TTY: nothing on stderr
    plain = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert plain.returncode == 0, plain.stderr
    assert "results 40" in plain.stdout and plain.stderr == ""

    # stderr on a pseudo-terminal: tqdm draws the bar there, stdout stays clean
    leader, follower = pty.openpty()
    # a new pseudo-terminal is 0 columns wide; give it a real terminal's size
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=env,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout = proc.communicate(timeout=60)[0].decode()
    finally:
        os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "results 40" in stdout and "job 1" in stdout
    assert "slow: 100%" in terminal and "40/40" in terminal, terminal
    # One bar, for the map only (the single job draws none); it may be redrawn.
    assert set(re.findall(r"(\w+):\s+\d+%\|", terminal)) == {"slow"}, terminal


def test_fallback_shows_per_worker_allocation_and_is_empty_safe():
    from dc_jupyter.ui import render

    state = render.MapState(name="m", total=3, done=3, per_worker={})
    assert "3/3 done" in render.map_text(state) and "width:100.0%" in render.map_html(state)
    assert "per worker" not in render.map_text(state)  # empty allocation: no line
    state.per_worker = {"tcp://10.0.0.5:1": 2, "tcp://10.0.0.6:1": 1}
    assert "per worker: 10.0.0.5:1 ×2, 10.0.0.6:1 ×1" in render.map_text(state)


def test_per_worker_counts_use_worker_names(cluster, no_thread_leak, comm_messages):
    from dc_jupyter.ui import widgets

    dc_jupyter.connect(cluster.address)

    @compute_this
    def ident(x):
        return x

    handle = ident.map(range(40)).submit()
    view = widgets.MapView(handle)
    handle.result(timeout=60)
    view.close()
    # The session cluster names its workers worker-0, worker-1 (not their addresses).
    assert view.state.per_worker and set(view.state.per_worker) <= {"worker-0", "worker-1"}
    assert "per worker: worker-" in render_text(view)


def render_text(view) -> str:
    return view.text(view.state)


# -- sweeps: one value for what every element shares, prefixed lines -----------------

SWEEP = """%%distribute --map p in range(3)
import math
from math import sqrt
root = sqrt(p)
total = p
print("hello", p)
print("two\\nlines")
"""


def test_sweep_keeps_shared_imports_single_and_prefixes_each_line(cluster, no_thread_leak):
    import math

    from conftest import ipython_shell
    from IPython.utils.capture import capture_output

    shell = ipython_shell()
    shell.run_line_magic("load_ext", "dc_jupyter")
    shell.run_line_magic("distribute", f"connect {cluster.address}")
    shell.user_ns["total"] = 10  # replaced by a list: the sweep says so
    with capture_output() as captured:
        result = shell.run_cell(SWEEP)
    assert result.error_in_exec is None, result.error_in_exec
    ns = shell.user_ns
    assert ns["math"] is math and ns["sqrt"] is math.sqrt  # one module, one function
    assert ns["root"] == [0.0, 1.0, math.sqrt(2)]  # computed per element: a list
    assert ns["total"] == [0, 1, 2]
    for p in range(3):
        assert f"[p={p}] hello {p}\n" in captured.stdout, captured.stdout
        assert f"[p={p}] two\n[p={p}] lines\n" in captured.stdout, captured.stdout
    assert "'total' was a int in the notebook and is now a list of 3 values" in captured.stderr
    # Rerunning does not warn again: the value it replaces is already the list.
    with capture_output() as captured:
        assert shell.run_cell(SWEEP).error_in_exec is None
    assert "now a list" not in captured.stderr
    assert shell.run_cell("math.floor(2.5)").result == 2  # later cells still work


def test_map_numbers_are_honest_and_formatted_one_way():
    from dc_jupyter.ui import render

    # Early on, however fast the first items were: no time left yet.
    early = render.MapState(name="m", total=200_000, done=5_000, running=2, elapsed=1.1)
    assert "left" not in render.map_counts(early)
    later = render.MapState(name="m", total=200_000, done=50_000, running=2, elapsed=4.0)
    assert "12.0 s left" in render.map_counts(later)
    # Running is what runs; the rest waits, shown apart.
    assert "running 2 · queued 149,998" in render.map_counts(later)
    # One number format: counts and rate alike.
    ended = render.MapState(name="m", total=200_000, done=200_000, elapsed=0.98)
    assert render.map_counts(ended) == "200,000/200,000 done · 204,082/s · in 1.0 s"
    # Failures are not a rate.
    failed = render.MapState(name="m", total=60, failed=60, elapsed=0.2)
    assert render.map_counts(failed) == "0/60 done · failed 60 · in 0.2 s"
    # Done, failed and cancelled are separate segments of the bar.
    mixed = render.MapState(name="m", total=30, done=25, failed=5, elapsed=1.0)
    bar = render.bar_html(mixed)
    assert "data-kind='finished'" in bar and "width:83.3%" in bar
    assert "data-kind='failed'" in bar and "width:16.7%" in bar
    assert "role='progressbar'" in bar and "aria-valuenow='30'" in bar
