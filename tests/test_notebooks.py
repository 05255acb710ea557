"""The example notebooks, executed in real kernels (nbclient), checked against their story.

Every ``notebooks/*.ipynb`` runs top to bottom in a real ``python3`` kernel whose
working directory is ``notebooks/``. Then the table ``CHECKS`` (keyed by
notebook name) asserts what the notebook's text tells the reader they will see:
values, names pulled back by ``%%distribute``, sweep lists, the saved state of
the widgets, errors (only in cells tagged ``raises-exception``, of the type the
text names) and, for ``05``, the names of the workers it started itself.

``01-quickstart`` runs on the embedded default cluster (the no-setup path); the
others get ``DASK_SCHEDULER_ADDRESS`` of the session ``cluster``, which is what
``binder/start`` does on Binder, and is faster than a cluster per notebook.
Cells are found by their ``id``, so the checks survive edits of the prose.
"""

from __future__ import annotations

import ast
import html
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EMBEDDED = {"01-quickstart"}  # proves a fresh install needs no cluster setup

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.timeout(240)


# -- running and reading a notebook --------------------------------------------------------


def execute(path: Path, scheduler_address: str | None) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    if scheduler_address:
        env["DASK_SCHEDULER_ADDRESS"] = scheduler_address
    else:
        env["DASK_DC_JUPYTER__LOCAL__N_WORKERS"] = "2"  # small and quick on any machine
    NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    ).execute(env=env)
    return nb


class Ran:
    """An executed notebook, read by cell id."""

    def __init__(self, nb: nbformat.NotebookNode) -> None:
        self.nb = nb
        self.cells = {c.id: c for c in nb.cells}

    def outputs(self, cell_id: str, kind: str) -> list:
        return [o for o in self.cells[cell_id].outputs if o.output_type == kind]

    def result(self, cell_id: str) -> str:
        (out,) = self.outputs(cell_id, "execute_result")
        return out["data"]["text/plain"]

    def stdout(self, cell_id: str) -> str:
        return "".join(o["text"] for o in self.outputs(cell_id, "stream") if o["name"] == "stdout")

    def error(self, cell_id: str) -> tuple[str, str, str]:
        (out,) = self.outputs(cell_id, "error")
        return out["ename"], out["evalue"], ANSI.sub("", "\n".join(out["traceback"]))

    def widget(self, cell_id: str) -> Shown:
        """The cell's dc_jupyter output, which must be its final state by now: static
        HTML and text (no widget view, which needs the widget manager to render)."""
        shown = [
            o for o in self.cells[cell_id].outputs
            if "dcj-" in o.get("data", {}).get("text/html", "")
        ]  # fmt: skip
        assert len(shown) == 1, f"expected one dc_jupyter output in cell {cell_id}, got {shown}"
        assert WIDGET_VIEW not in shown[0]["data"], f"cell {cell_id} was saved as a live widget"
        return Shown(shown[0]["data"])


class Shown:
    """A dc_jupyter output as saved: its HTML and text, and its bar's value."""

    def __init__(self, data: dict) -> None:
        self.html = html.unescape(data["text/html"])
        self.text = data["text/plain"]

    @property
    def bar(self) -> tuple[int, int, str]:
        """(value, maximum, state) of the map's progressbar."""
        (now,) = re.findall(r"aria-valuenow='(\d+)'", self.html)
        (top,) = re.findall(r"aria-valuemax='(\d+)'", self.html)
        (state,) = re.findall(r"class='dcj-map' data-state='(\w+)'", self.html)
        return int(now), int(top), state

    @property
    def cancel_button_shown(self) -> bool:
        return "Cancel" in self.html


# -- what each notebook tells its reader -------------------------------------------------


def check_quickstart(ran: Ran, context: dict) -> None:
    assert "not sent" in ran.cells["lazy"].outputs[0]["data"]["text/html"]
    assert ran.result("compute") == "4"
    job = ran.widget("compute")
    assert "data-state='finished'" in job.html and "→ 4" in job.html
    assert "dashboard" in job.html
    shown = ran.result("cluster")
    assert shown.startswith("embedded local cluster at tls://127.0.0.1:"), shown
    assert "2 workers, 2 threads" in shown
    assert ran.result("map") == repr([x * x for x in range(10)])
    squares = ran.widget("map")
    assert squares.bar == (100, 100, "finished")
    assert "100/100 done" in squares.html
    assert ran.result("sum") == str(sum(x * x for x in range(100)))


def check_cell_magic(ran: Ran, context: dict) -> None:
    rng = random.Random(42)  # what the cell computes from the notebook's seed and n
    mean = round(sum(rng.gauss(0, 1) for _ in range(1000)) / 1000, 3)
    assert ran.stdout("first") == "drew 1000 samples on the cluster\n"
    assert ran.result("first") == repr(mean)
    # The cell's widget previews its result, like a function's does.
    assert "data-state='finished'" in ran.widget("first").html
    assert f"→ {mean!r}" in ran.widget("first").html
    assert "→" not in ran.widget("define-remote").html  # no result, no preview
    # Names assigned remotely are notebook variables; the cell ran in another process.
    assert ran.result("pulled") == repr((1000, mean, True))
    assert ran.result("use-remote") == "(2000, 42)"
    assert ran.result("pull-check") == "(332833500, False)"
    # --async: no result, a widget, the notebook free before the cell finished.
    assert not ran.outputs("async", "execute_result")
    assert "data-state='finished'" in ran.widget("async").html
    assert ran.result("async-early") == "(False, False)"
    assert ran.result("async-done") == "(42, 'finished')"
    assert ran.result("sweep") == "['k=1', 'k=2', 'k=3', 'k=4']"
    assert ran.widget("sweep").bar == (4, 4, "finished")
    assert ran.result("sweep-lists") == "([1, 4, 9, 16], [0.001, 0.002, 0.003, 0.004])"


def check_map_and_progress(ran: Ran, context: dict) -> None:
    assert ran.result("blocking") == "([0, 1, 4, 9, 16], 1521)"
    blocking = ran.widget("blocking")
    assert blocking.bar == (40, 40, "finished") and "40/40 done" in blocking.html

    handle = ran.widget("handle")
    assert handle.bar == (20, 20, "finished")
    assert not handle.cancel_button_shown  # the button goes once the map is done
    assert ran.result("handle-result") == str(sum(x * x for x in range(20)))

    ename, _, traceback = ran.error("map-error")
    assert ename == "ZeroDivisionError"
    assert "----> 3     return 1 / x" in traceback  # the remote frame, with its source
    assert "(raised by item 2 of inverse.map; 1 of 4 items failed" in ran.result("map-error-note")
    failed = ran.widget("map-error")
    assert failed.bar == (4, 4, "failed")
    assert "3/4 done" in failed.html and "failed 1" in failed.html

    assert ran.widget("failing-handle").bar == (4, 4, "failed")
    assert ran.result("per-item") == "[0.25, 0.5, 'ZeroDivisionError: division by zero', 1.0]"
    assert ran.result("per-item-counts") == (
        "('error', {'finished': 3, 'error': 1, 'cancelled': 0, 'pending': 0}, [2])"
    )

    assert ran.result("cancel") == (
        "('cancelled', {'finished': 0, 'error': 0, 'cancelled': 6, 'pending': 0})"
    )
    cancelled = ran.widget("cancel-handle")
    assert cancelled.bar[2] == "cancelled" and "cancelled 6" in cancelled.html
    assert not cancelled.cancel_button_shown
    assert ran.result("after-cancel") == "9"


def check_connect(ran: Ran, context: dict) -> None:
    (address,) = re.findall(r"scheduler at (tcp://127\.0\.0\.1:\d+)", ran.stdout("scheduler"))
    assert address != context["session_address"]  # its own cluster, not the test's
    shown = ran.result("show")
    assert shown.startswith(f"Dask cluster at {address}: 2 workers, 2 threads"), shown
    spread = dict(re.findall(r"'(worker-\d)': (\d+)", ran.result("spread")))
    assert set(spread) == {"worker-1", "worker-2"}, spread
    assert sum(map(int, spread.values())) == 10
    assert ran.widget("spread").bar == (10, 10, "finished")
    assert ran.result("cell") in ("'worker-1'", "'worker-2'")
    assert "closed" in ran.stdout("close")
    assert ran.stdout("stop") == "all stopped: True\n"
    (pids,) = re.findall(r"worker pids: (\[.*\])", ran.stdout("workers"))
    for pid in ast.literal_eval(pids):  # nothing the notebook started is left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def check_errors(ran: Ran, context: dict) -> None:
    assert ran.result("parse-ok") == "42"

    ename, evalue, traceback = ran.error("remote-error")
    assert (ename, evalue) == ("ValueError", "invalid literal for int() with base 10: 'twenty-one'")
    assert "value = int(text)" in traceback  # the function's own source line
    assert "data-state='failed'" in ran.widget("remote-error").html

    ename, _, traceback = ran.error("cell-error")
    assert ename == "ZeroDivisionError"
    assert "ratios = [10 / d for d in (5, 2, 0)]" in traceback
    assert ran.result("cell-error-namespace") == "False"

    for cell_id in ("timeout", "cell-timeout"):
        ename, evalue, _ = ran.error(cell_id)
        assert ename == "TimeoutError" and "0.5 s" in evalue and "cancelled" in evalue
    assert "data-state='cancelled'" in ran.widget("timeout").html

    assert ran.result("cancel") == "'cancelled'"
    assert ran.error("cancelled-result")[0] in ("FutureCancelledError", "CancelledError")

    assert ran.error("type-error")[:2] == (
        "TypeError",
        "parse() takes 1 positional argument but 2 were given",
    )
    assert not ran.outputs("type-error", "display_data")  # no widget: nothing was sent
    ename, evalue, _ = ran.error("unpicklable")
    assert ename == "SerializationError"
    assert "'text'" in evalue and "_thread.lock" in evalue and "Nothing was sent" in evalue
    ename, evalue, _ = ran.error("cell-unpicklable")
    assert ename == "SerializationError" and "'lock'" in evalue and "_thread.lock" in evalue
    ename, evalue, _ = ran.error("name-error")
    assert ename == "NameError" and "'undefined_value'" in evalue and "Nothing was sent" in evalue


CHECKS: dict[str, Callable[[Ran, dict], None]] = {
    "01-quickstart": check_quickstart,
    "02-cell-magic": check_cell_magic,
    "03-map-and-progress": check_map_and_progress,
    "05-connect-to-a-cluster": check_connect,
    "06-errors-and-debugging": check_errors,
}


#: Notebooks executed and asserted by another test (which starts their own cluster).
EXECUTED_ELSEWHERE = {
    "04-load-test": "tests/test_loadtest.py::test_notebook_04_runs_and_shows_table_and_plots",
}


# -- the tests -------------------------------------------------------------------------------


def test_the_notebooks_are_all_there():
    names = {p.stem for p in NOTEBOOKS}
    assert set(CHECKS) <= names, set(CHECKS) - names
    assert names == set(CHECKS) | set(EXECUTED_ELSEWHERE), "every notebook must be asserted"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata
    assert any(c.cell_type == "markdown" for c in nb.cells)  # it tells a story


@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if p.stem not in EXECUTED_ELSEWHERE], ids=lambda p: p.stem
)
def test_notebook_runs_and_shows_what_it_says(path, cluster):
    name = path.stem
    assert name in CHECKS, f"add the assertions for {name} to CHECKS in {__file__}"
    ran = Ran(execute(path, None if name in EMBEDDED else cluster.address))

    # Errors appear exactly in the cells that say they raise, and nowhere else.
    tagged = {c.id for c in ran.nb.cells if "raises-exception" in c.metadata.get("tags", [])}
    failed = {c.id for c in ran.nb.cells if c.cell_type == "code" and ran.outputs(c.id, "error")}
    assert failed == tagged, (
        f"unexpected errors in {failed - tagged}, no error in {tagged - failed}"
    )

    CHECKS[name](ran, {"session_address": cluster.address})
