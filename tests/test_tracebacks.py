"""Issue 10: remote tracebacks as a user sees them, In[n] labels, cancel() of a finished handle.

The traceback checks run in a real Jupyter kernel (nbclient) and read the text
of the error output, with IPython's colours removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dc_jupyter import compute_this
from dc_jupyter.ui import render

WORKTREE = str(Path(__file__).resolve().parent.parent)
# One real kernel runs the notebook once for all the checks; on a busy 2-core
# machine that takes longer than the suite's 300 s per test.
pytestmark = pytest.mark.timeout(900)


@compute_this
def _double(x):
    return 2 * x


# -- cancel() of a finished handle ------------------------------------------------------


def test_cancel_of_a_finished_handle_changes_nothing(cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
    handle = _double(21).submit()
    assert handle.result(timeout=60) == 42
    assert handle.cancel() is False
    assert handle.status == "finished" and not handle.cancelled()
    assert handle.result() == 42
    state = render.job_state(handle)
    assert state.state == "finished", state
    assert "cancelled" not in render.job_text(state)


# -- what a user sees in a real kernel ---------------------------------------------------

MODULE = """\
from dc_jupyter import compute_this


@compute_this
def parse(text):
    cleaned = text.strip()
    return int(cleaned)
"""

CELLS = {
    "setup": (
        "%load_ext dc_jupyter\nimport IPython\nfrom dc_jupyter import compute_this\n\n"
        "class MyError(Exception):\n    pass\n\n"
        "@compute_this\ndef inverse(x):\n    y = 2\n    return 1 / x\n\n"
        "@compute_this\ndef chained(x):\n    try:\n        {}[x]\n"
        "    except KeyError as e:\n        raise MyError('wrapped') from e\n"
        "IPython.__version__"
    ),
    "job": "inverse(0).compute()",
    "map": "inverse.map([1, 0]).compute()",
    "module": "import tbmod\ntbmod.parse(' x ').compute()",
    "cell": "%%distribute\na = 1\nb = 0\na / b",
    "ok cell": "%%distribute\nanswer = 6 * 7\nanswer",
    "catch": (
        "try:\n    chained('k').compute()\nexcept MyError as e:\n"
        "    print('caught', type(e) is MyError, repr(e.__cause__))"
    ),
    "chained": "chained('k').compute()",
    "seen twice": "h = inverse(0).submit()\nh.exception()\ntry:\n    h.result()\nexcept ZeroDivisionError:\n    pass",
    "again": "h.result()",
}


def _text(output) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(output["traceback"]))


@pytest.fixture(scope="module")
def kernel_run(tmp_path_factory):
    """The notebook run once in a real kernel on the embedded default cluster."""
    workdir = tmp_path_factory.mktemp("tracebacks")
    (workdir / "tbmod.py").write_text(MODULE)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS.values()]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [WORKTREE, str(workdir), os.environ.get("PYTHONPATH")])
        ),
    }
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)
    cells = dict(zip(CELLS, nb.cells, strict=True))
    return cells, workdir


def _error(cell) -> str:
    (error,) = [o for o in cell.outputs if o["output_type"] == "error"]
    return _text(error)


def _arrows(text: str) -> list[str]:
    """The source lines IPython points at, outermost first."""
    return [m.group(2).strip() for m in re.finditer(r"^-+> +(\d+) (.*)$", text, re.M)]


def _no_plumbing(text: str) -> None:
    """No frame of dc_jupyter's, Dask's or IPython's own code is shown."""
    for word in (
        "dc_jupyter",
        "handle.py",
        "cell.py",
        "mapping.py",
        "job.py",
        "_worker",
        "distributed",
        "interactiveshell",
    ):
        assert word not in text, (word, text)


def test_kernel_runs_this_ipython(kernel_run):
    import IPython

    cells, _ = kernel_run
    assert cells["setup"].outputs[-1]["data"]["text/plain"] == repr(IPython.__version__)


def test_job_traceback_is_the_compute_line_then_the_line_that_raised(kernel_run):
    cells, _ = kernel_run
    text = _error(cells["job"])
    assert _arrows(text) == ["inverse(0).compute()", "return 1 / x"], text
    assert f"Cell In[{cells['setup'].execution_count}], line 11" in text
    _no_plumbing(text)


def test_map_item_traceback_points_at_the_line_that_raised(kernel_run):
    cells, _ = kernel_run
    text = _error(cells["map"])
    assert _arrows(text) == ["inverse.map([1, 0]).compute()", "return 1 / x"], text
    _no_plumbing(text)


def test_module_file_traceback_points_at_the_line_that_raised(kernel_run):
    cells, workdir = kernel_run
    text = _error(cells["module"])
    assert _arrows(text) == ["tbmod.parse(' x ').compute()", "return int(cleaned)"], text
    assert f"{workdir / 'tbmod.py'}:7" in text
    _no_plumbing(text)


def test_failed_cell_shows_only_its_own_line_under_its_number(kernel_run):
    cells, _ = kernel_run
    cell = cells["cell"]
    text = _error(cell)
    assert _arrows(text) == ["a / b"], text
    assert f"Cell In[{cell.execution_count}], line 4" in text
    _no_plumbing(text)


def test_cell_widgets_name_the_cell_that_ran(kernel_run):
    cells, _ = kernel_run
    for name, state in (("cell", "failed"), ("ok cell", "finished")):
        cell = cells[name]
        texts = [o["data"]["text/plain"] for o in cell.outputs if "data" in o]
        label = f"In[{cell.execution_count}] %%distribute: {state}"
        assert any(t.startswith(label) for t in texts), (label, texts)


def test_notebook_exception_class_is_caught_and_its_cause_kept(kernel_run):
    cells, _ = kernel_run
    streams = "".join(o.get("text", "") for o in cells["catch"].outputs)
    assert "caught True KeyError('k')" in streams
    text = _error(cells["chained"])
    assert "direct cause" in text
    assert _arrows(text) == ["{}[x]", "chained('k').compute()", "raise MyError('wrapped') from e"]
    _no_plumbing(text)


def test_an_earlier_look_at_the_error_adds_no_frames(kernel_run):
    cells, _ = kernel_run
    assert not [o for o in cells["seen twice"].outputs if o["output_type"] == "error"]
    text = _error(cells["again"])
    assert _arrows(text) == ["h.result()", "return 1 / x"], text
    _no_plumbing(text)
