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
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

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
    # The monitor draws a displayed handle's final state within 0.1 s of the end;
    # wait here so it is sent before the notebook is saved (TESTING.md).
    "wait": "mf.result()\ntime.sleep(0.6)",
    # %%distribute in each form
    "load": "%load_ext dc_jupyter",
    "cell": "%%distribute\nimport time\ntime.sleep(0.3)\nanswer = 6 * 7\nanswer",
    "async cell": "%%distribute --async -o h\nimport time\ntime.sleep(0.5)\nlate = 'yes'\nlate",
    # h.result() returns once `late` is in the namespace; the sleep lets the
    # monitor draw the displayed handle's final state before the notebook is saved
    "wait cell": "h.result()\ntime.sleep(0.6)\nlate",
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


def descendants(state: dict, model_id: str) -> list[dict]:
    """The saved states of a widget and of every widget inside it."""
    model = state[model_id]
    found = [model]
    for child in model["state"].get("children", []):
        found += descendants(state, child.removeprefix("IPY_MODEL_"))
    return found


def widget_of(cell, state: dict) -> list[dict]:
    views = [o for o in cell.outputs if WIDGET_VIEW in o.get("data", {})]
    assert len(views) == 1, f"expected one widget in {cell.source!r}, got {cell.outputs}"
    return descendants(state, views[0]["data"][WIDGET_VIEW]["model_id"])


def values(models: list[dict], name: str, trait: str) -> list:
    return [m["state"].get(trait) for m in models if m["model_name"] == name]


def fallback(cell) -> dict:
    (out,) = [o for o in cell.outputs if WIDGET_VIEW in o.get("data", {})]
    return out["data"]


def test_notebook_keeps_final_widget_state_and_fallbacks(tmp_path, cluster):
    nb = run_notebook(
        tmp_path, [SETUP, *CELLS.values()], {"DASK_SCHEDULER_ADDRESS": cluster.address}
    )
    cells = dict(zip(CELLS, nb.cells[1:], strict=True))
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    state = nb.metadata.widgets[WIDGET_STATE]["state"]

    job = widget_of(cells["job"], state)
    (line,) = [v for v in values(job, "HTMLModel", "value") if "dcj-job" in v]
    assert "data-state='finished'" in line and "→ 16" in line
    assert "dashboard" in line  # link to the Dask dashboard of the cluster
    assert fallback(cells["job"])["text/plain"].startswith("square: finished")
    assert "→ 16" in fallback(cells["job"])["text/html"]

    mapped = widget_of(cells["map"], state)
    (bar,) = [m["state"] for m in mapped if m["model_name"] == "IntProgressModel"]
    assert (bar["value"], bar["max"], bar["bar_style"]) == (12, 12, "success")
    assert any("12/12 done" in v for v in values(mapped, "HTMLModel", "value"))
    # Compact final state: no cancel button on a blocking map.
    assert fallback(cells["map"])["text/plain"].startswith("square.map: finished, 12/12 done")
    assert "width:100.0%" in fallback(cells["map"])["text/html"]

    failed = widget_of(cells["failed"], state)
    (line,) = [v for v in values(failed, "HTMLModel", "value") if "dcj-job" in v]
    assert "data-state='failed'" in line and "ValueError: bad input 1" in line
    assert "#dc3545" in line  # red
    assert "ValueError: bad input 1" in fallback(cells["failed"])["text/plain"]

    handle = widget_of(cells["done handle"], state)
    assert any("→ 25" in v for v in values(handle, "HTMLModel", "value"))

    live = widget_of(cells["live map handle"], state)
    (bar,) = [m["state"] for m in live if m["model_name"] == "IntProgressModel"]
    assert (bar["value"], bar["max"]) == (6, 6)
    (button,) = [m for m in live if m["model_name"] == "ButtonModel"]
    layout = state[button["state"]["layout"].removeprefix("IPY_MODEL_")]["state"]
    assert layout.get("display") == "none"  # the cancel button goes once done
    assert fallback(cells["live map handle"])["text/plain"].startswith("square.map: finished")

    # %%distribute, sync: the job widget, labelled with the cell, shows its value
    count = cells["cell"].execution_count
    cell = widget_of(cells["cell"], state)
    (line,) = [v for v in values(cell, "HTMLModel", "value") if "dcj-job" in v]
    assert f"In[{count}] %%distribute" in line
    assert "data-state='finished'" in line and "→ 42" in line, line
    assert fallback(cells["cell"])["text/plain"].startswith(f"In[{count}] %%distribute: finished")
    assert any(o.get("data", {}).get("text/plain") == "42" for o in cells["cell"].outputs)

    # --async: the displayed handle, drawn final while a later cell waited on it
    count = cells["async cell"].execution_count
    handle = widget_of(cells["async cell"], state)
    (line,) = [v for v in values(handle, "HTMLModel", "value") if "dcj-job" in v]
    assert f"In[{count}] %%distribute" in line
    assert "data-state='finished'" in line and "→ 'yes'" in html.unescape(line), line
    (button,) = [m for m in handle if m["model_name"] == "ButtonModel"]
    layout = state[button["state"]["layout"].removeprefix("IPY_MODEL_")]["state"]
    assert layout.get("display") == "none"
    assert cells["wait cell"].outputs[-1]["data"]["text/plain"] == "'yes'"

    # --map: the sweep's bar at total, labelled with the cell
    count = cells["sweep"].execution_count
    sweep = widget_of(cells["sweep"], state)
    (bar,) = [m["state"] for m in sweep if m["model_name"] == "IntProgressModel"]
    assert (bar["value"], bar["max"], bar["bar_style"]) == (6, 6, "success")
    assert any(
        f"In[{count}] %%distribute --map i" in v and "finished" in v
        for v in values(sweep, "HTMLModel", "value")
    )
    assert fallback(cells["sweep"])["text/plain"].startswith(
        f"In[{count}] %%distribute --map i: finished, 6/6 done"
    )


# -- in this process: traffic, threads, fallbacks ----------------------------------


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
    assert "#dc3545" in view.line.value
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
    assert view.state.worker in client.scheduler_info()["workers"]  # running on which worker
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
    (shown,) = [o.data for o in captured.outputs]  # what the terminal prints as text/plain
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
