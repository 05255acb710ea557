"""%%distribute in a real Jupyter kernel (nbclient): live output order, tracebacks, Out."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from conftest import kernel_env
from nbclient import NotebookClient

WORKTREE = str(Path(__file__).resolve().parent.parent)


class TimedClient(NotebookClient):
    """Records when each iopub message arrives, per cell."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[int, float, str, dict]] = []

    def process_message(self, msg, cell, cell_index):
        self.arrivals.append((cell_index, time.monotonic(), msg["msg_type"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


def run_notebook(cells: list[str], cluster) -> tuple[nbformat.NotebookNode, TimedClient]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = TimedClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    env = kernel_env(cluster.address)
    client.execute(env=env)
    return nb, client


@pytest.fixture(scope="module")
def executed(cluster):
    cells = [
        "%load_ext dc_jupyter\nimport dc_jupyter\ndc_jupyter.__file__",
        "n = 3",
        # 2: output while it runs, in order, stdout and stderr interleaved
        "%%distribute\nimport sys, time\nprint('first', n)\nprint('warning', file=sys.stderr)\n"
        "time.sleep(1.5)\nprint('second')\nresult = n * 2\nresult",
        # 3: a remote exception
        "%%distribute\nlost = 1\ndef explode(v):\n    return {}[v]\nexplode('missing')",
        "'lost' in globals(), result, _",
    ]
    return run_notebook(cells, cluster)


def test_kernel_imports_this_worktree(executed):
    nb, _ = executed
    assert nb.cells[0].outputs[0]["data"]["text/plain"].strip("'").startswith(WORKTREE)


def test_output_arrives_live_and_in_order(executed):
    nb, client = executed
    outputs = nb.cells[2].outputs
    streams = [(o["name"], o["text"]) for o in outputs if o["output_type"] == "stream"]
    joined = [(name, line) for name, text in streams for line in text.splitlines()]
    assert joined == [("stdout", "first 3"), ("stderr", "warning"), ("stdout", "second")]
    result = [o for o in outputs if o["output_type"] == "execute_result"]
    assert result and result[0]["data"]["text/plain"] == "6"
    assert result[0]["execution_count"] == nb.cells[2].execution_count

    def arrival(text):
        return next(
            t
            for index, t, kind, content in client.arrivals
            if index == 2 and kind == "stream" and text in content.get("text", "")
        )

    # "first" was shown while the worker still slept, well before "second".
    assert arrival("second") - arrival("first") > 1.0


def test_remote_exception_is_an_ordinary_traceback_at_the_cell_line(executed):
    nb, _ = executed
    errors = [o for o in nb.cells[3].outputs if o["output_type"] == "error"]
    assert len(errors) == 1
    error = errors[0]
    assert error["ename"] == "KeyError" and error["evalue"] == "'missing'"
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))
    assert f"Cell In[{nb.cells[3].execution_count}], line 5" in text
    assert "----> 5 explode('missing')" in text
    assert "----> 4     return {}[v]" in text
    assert "_cell_worker" not in text and "distributed" not in text


def test_failed_cell_leaves_namespace_untouched(executed):
    nb, _ = executed
    assert nb.cells[4].outputs[0]["data"]["text/plain"] == "(False, 6, 6)"
