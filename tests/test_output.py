"""Output of the work comes back live (issue 16) and is not kept on the scheduler (17).

Against real ``dask scheduler``/``dask worker`` processes whose workers cannot
import dc_jupyter: a real kernel (nbclient) for what a notebook shows (mime
types, order, which cell), and the in-process IPython shell for terminals.
"""

from __future__ import annotations

import nbformat
import pytest
from conftest import ipython_shell, kernel_env
from IPython.utils.capture import capture_output
from nbclient import NotebookClient

FUNCTION = """\
from dc_jupyter import compute_this
import logging, warnings
from IPython.display import HTML

@compute_this()
def noisy(x):
    print('hello', x)
    warnings.warn('careful')
    logging.getLogger('mine').warning('logged %s', x)
    display(HTML(f'<b>bold {x}</b>'))
    print('bye', x)
    return x + 1

@compute_this()
def spread(n):
    print('spread start')
    values = noisy.map(range(n)).compute()   # sent from the worker
    print('spread end')
    return values

@compute_this(retries=2)
def flaky(path):
    import os
    tries = os.path.getsize(path) if os.path.exists(path) else 0
    with open(path, 'a') as fh:
        fh.write('x')
    print('try', tries)
    if tries < 2:
        raise ValueError(tries)
    return tries

@compute_this()
def later(seconds):
    import time
    print('early line')
    time.sleep(seconds)
    print('late line')
    return seconds
"""


ASYNC = range(20)
BUSY = 5 + len(ASYNC)  # the cell that waits for the --async ones
NESTED = BUSY + 1
LATE = NESTED + 1


def run_notebook(cells: list[str], cluster) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    env = kernel_env(cluster.address)
    client.execute(env=env)
    return nb


def kinds(cell) -> list[str]:
    """Each output as ``stdout:text``, ``stderr:text``, ``display:mimes`` or ``result``."""
    shown = []
    for out in cell.outputs:
        data = out.get("data", {})
        if "dcj-" in data.get("text/html", "") or any("widget" in m for m in data):
            continue  # dc_jupyter's own progress view
        if out["output_type"] == "stream":
            shown.append(f"{out['name']}:{out['text']}")
        elif out["output_type"] == "display_data":
            shown.append("display:" + ",".join(sorted(out["data"])))
        else:
            shown.append(out["output_type"])
    return shown


@pytest.fixture(scope="module")
def notebook(cluster):
    cells = [
        "%load_ext dc_jupyter\n" + FUNCTION,
        # 1: a job: prints, warning, log record, display, in order, before its value
        "noisy(2).compute()",
        # 2: a cell: bare display(), an HTML object, a figure shown and one left open
        "%%distribute\nprint('one')\ndisplay(HTML('<i>rich</i>'))\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nprint('two')\n"
        "plt.figure()\nplt.plot([2, 1])\nNone",
        # 3: a map: each line marked with its item
        "noisy.map(range(3)).compute()",
        # 4: a submitted handle: its output lands in its own cell
        "handle = noisy(7).submit(); handle.result()",
        # 5-24: --async cells whose output arrives while the last cell waits for them
        *[
            f"%%distribute --async -o h{k}\nimport time\ntime.sleep(0.2)\nprint('async {k}')"
            for k in ASYNC
        ],
        f"for h in [{', '.join(f'h{k}' for k in ASYNC)}]:\n    h.result(timeout=120)\n"
        "print('busy cell')",
        # NESTED: work sent from inside a job prints into the job's cell
        "spread(2).compute()",
        # LATE: a handle still running when its cell ends; the next cell waits for it
        "import time\nlate = later(2).submit()\ntime.sleep(0.5)",
        "late.result()\nprint('next cell')",
    ]
    return run_notebook(cells, cluster)


def test_job_output_in_order_in_the_cell(notebook):
    cell = notebook.cells[1]
    assert [o["output_type"] for o in cell.outputs if o["output_type"] == "error"] == []
    shown = kinds(cell)
    text = "".join(s for s in shown if s.startswith(("stdout", "stderr")))
    assert "UserWarning: careful" in text and "WARNING:mine:logged 2" in text
    stdout = [s for s in shown if not s.startswith("stderr")]
    assert stdout == [
        "stdout:hello 2\n",
        "display:text/html,text/plain",
        "stdout:bye 2\n",
        "execute_result",
    ]
    html = [o["data"].get("text/html") for o in cell.outputs if o["output_type"] == "display_data"]
    assert "<b>bold 2</b>" in html


def test_cell_rich_output_and_figures(notebook):
    shown = kinds(notebook.cells[2])
    assert "error" not in shown, notebook.cells[2].outputs
    assert [s for s in shown if not s.startswith("stderr")] == [
        "stdout:one\n",
        "display:text/html,text/plain",
        "display:image/png,text/plain",  # plt.show()
        "stdout:two\n",
        "display:image/png,text/plain",  # left open at the end
    ]


def test_map_lines_marked_with_their_item(notebook):
    cell = notebook.cells[3]
    stdout = "".join(o["text"] for o in cell.outputs if o.get("name") == "stdout")
    for i in range(3):
        assert f"[item {i}] hello {i}\n" in stdout and f"[item {i}] bye {i}\n" in stdout
    assert cell.outputs[-1]["data"]["text/plain"] == "[1, 2, 3]"


def test_submitted_handle_output_in_its_cell(notebook):
    shown = kinds(notebook.cells[4])
    assert shown[0] == "stdout:hello 7\n" and shown[-1] == "execute_result"


def test_late_output_of_a_submitted_handle_goes_to_the_cell_that_submitted_it(notebook):
    # As ipyparallel shows a late result's output with the cell that sent it: what
    # it printed while its cell ran is a stream there; what came after its cell
    # ended is in a display that cell kept for it.
    cell, after = notebook.cells[LATE], notebook.cells[LATE + 1]
    streams = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream")
    displays = "".join(
        o["data"].get("text/plain", "") for o in cell.outputs if o["output_type"] == "display_data"
    )
    assert "early line" in streams and "late line" not in streams, cell.outputs
    assert "late line" in displays, cell.outputs
    assert kinds(after) == ["stdout:next cell\n"]


def test_async_cells_write_into_their_own_cell(notebook):
    # Each prints while the last cell runs; each line lands in its own cell.
    for k in ASYNC:
        cell = notebook.cells[5 + k]
        texts = [o["data"]["text/plain"] for o in cell.outputs if "data" in o]
        assert [t for t in texts if "async" in t] == [f"async {k}\n"], cell.outputs
    assert kinds(notebook.cells[BUSY]) == ["stdout:busy cell\n"]


def test_output_of_work_sent_from_inside_a_job_in_its_cell(notebook):
    cell = notebook.cells[NESTED]
    shown = [s for s in kinds(cell) if not s.startswith("stderr")]
    stdout = "".join(s.partition(":")[2] for s in shown if s.startswith("stdout"))
    assert stdout.startswith("spread start\n") and stdout.endswith("spread end\n"), shown
    for i in range(2):
        assert f"hello {i}\n" in stdout and f"bye {i}\n" in stdout  # not marked: a job's
    assert shown.count("display:text/html,text/plain") == 2 and shown[-1] == "execute_result"
    stderr = "".join(s for s in kinds(cell) if s.startswith("stderr"))
    assert stderr.count("WARNING:mine:logged") == 2
    # ...and nowhere else.
    assert not any("spread" in s for c in notebook.cells[:NESTED] for s in kinds(c))


# -- terminal IPython ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shell(cluster):
    import dc_jupyter

    ip = ipython_shell()
    ip.run_line_magic("load_ext", "dc_jupyter")
    dc_jupyter.connect(cluster.address)
    ip.run_cell(FUNCTION)
    yield ip
    dc_jupyter.close()


@pytest.fixture(autouse=True)
def fresh_connection():
    """Overrides conftest's: this module keeps one connection for its shell."""
    yield


def test_terminal_shows_function_output(shell):
    with capture_output() as cap:
        result = shell.run_cell("value = noisy(4).compute()")
    assert result.error_in_exec is None
    assert cap.stdout == "hello 4\nbye 4\n"
    assert "UserWarning: careful" in cap.stderr and "WARNING:mine:logged 4" in cap.stderr
    assert [o.data for o in cap.outputs] == [
        {"text/html": "<b>bold 4</b>", "text/plain": "<IPython.core.display.HTML object>"}
    ]
    assert shell.user_ns["value"] == 5


def test_output_shows_once_when_two_clients_share_the_cluster(shell, client):
    # A user's own client (client=) and dc_jupyter's: the scheduler sends each
    # output event to both, and each line must still show once.
    from dc_jupyter import compute_this

    assert compute_this(client=client)(abs)(-1).compute() == 1
    with capture_output() as cap:
        result = shell.run_cell("three = noisy(3).compute()")
    assert result.error_in_exec is None
    assert cap.stdout == "hello 3\nbye 3\n"


def test_output_of_jobs_computed_together(shell):
    with capture_output() as cap:
        result = shell.run_cell(
            "import dc_jupyter\nvalues = dc_jupyter.compute(noisy(1), noisy(2))"
        )
    assert result.error_in_exec is None
    assert shell.user_ns["values"] == (2, 3)
    assert sorted(cap.stdout.splitlines()) == ["bye 1", "bye 2", "hello 1", "hello 2"]
    assert len(cap.outputs) == 2


def test_retried_work_marks_the_lines_of_each_attempt(shell, tmp_path):
    # Dask's retries= for a job, the map's own per-item retries for a map.
    with capture_output() as cap:
        result = shell.run_cell(
            f"tried = flaky({str(tmp_path / 'job')!r}).compute()\n"
            f"mapped = flaky.map([{str(tmp_path / 'item')!r}]).compute()"
        )
    assert result.error_in_exec is None
    assert shell.user_ns["tried"] == 2 and shell.user_ns["mapped"] == [2]
    assert cap.stdout.splitlines() == [
        "try 0",
        "[attempt 2] try 1",
        "[attempt 3] try 2",
        "[item 0] try 0",
        "[item 0] [attempt 2] try 1",
        "[item 0] [attempt 3] try 2",
    ]
    # A cell rerun by --retries.
    with capture_output() as cap:
        result = shell.run_cell(
            f"%%distribute --retries 1\nimport os\npath = {str(tmp_path / 'cell')!r}\n"
            "n = os.path.getsize(path) if os.path.exists(path) else 0\n"
            "open(path, 'a').write('x')\nprint('cell try', n)\nif n < 1:\n    raise ValueError(n)"
        )
    assert result.error_in_exec is None
    assert cap.stdout.splitlines() == ["cell try 0", "[attempt 2] cell try 1"]


def test_in_process_sweeps_and_maps_mark_their_lines(shell):
    with capture_output() as cap:
        result = shell.run_cell("%%distribute --local --map p in range(3)\nprint('hi', p)")
    assert result.error_in_exec is None
    assert cap.stdout.splitlines() == ["[p=0] hi 0", "[p=1] hi 1", "[p=2] hi 2"]
    assert result.result is None  # print() gives None in each element: no Out[...] of Nones
    with capture_output() as cap:
        result = shell.run_cell(
            "@compute_this(backend='local')\ndef say(x):\n    print('item', x)\n    return x\n"
            "said = say.map([5, 6]).compute()"
        )
    assert result.error_in_exec is None and shell.user_ns["said"] == [5, 6]
    assert cap.stdout.splitlines() == ["[item 0] item 5", "[item 1] item 6"]


def test_ipython_display_imported_in_the_notebook(shell):
    # Sent by reference: on a worker with IPython but no shell it would print a repr.
    shell.run_cell(
        "from IPython.display import display as show, Markdown\n"
        "@compute_this()\ndef shows(x):\n    show(Markdown(f'*{x}*'))\n    return x"
    )
    with capture_output() as cap:
        result = shell.run_cell("shows(5).compute()")
    assert result.error_in_exec is None
    assert [o.data.get("text/markdown") for o in cap.outputs] == ["*5*"]
    assert "Markdown object" not in cap.stdout


def test_big_output_capped_and_not_kept_on_the_scheduler(shell, client):
    # 50 MB printed: at most 2 MB travels, the rest is reported; nothing stays behind.
    with capture_output() as cap:
        result = shell.run_cell(
            "%%distribute\nline = 'x' * 999\nfor _ in range(50_000):\n    print(line)"
        )
    assert result.error_in_exec is None
    assert 1_000_000 < len(cap.stdout) <= 2_000_000
    assert "output truncated" in cap.stderr and "bytes were dropped on the workers" in cap.stderr
    assert client.get_events("dc_jupyter-output") == ()


def test_big_map_output_capped_with_a_count(shell):
    with capture_output() as cap:
        result = shell.run_cell("out = noisy.map(range(2000)).compute()")
    assert result.error_in_exec is None
    lines = cap.stdout.splitlines() + cap.stderr.splitlines()
    shown = [line for line in lines if line.startswith("[item ")]
    assert len(shown) + len(cap.outputs) == 1000  # a display counts as a line
    assert "more lines were not shown (at most 1,000 lines" in cap.stderr
    assert shell.user_ns["out"] == list(range(1, 2001))


def test_workers_import_matplotlib_only_for_code_that_uses_it(tmp_path):
    """Output forwarding installs a lazy matplotlib backend on each worker. Dask's
    error pickling probes every module's ``__file__``, which imported matplotlib
    there: a worker's first failing or cancelled task took 1-3 s longer."""
    from conftest import process_cluster
    from distributed import Client

    from dc_jupyter import compute_this

    def fails():
        raise ValueError("no plots here")

    with process_cluster(tmp_path) as cluster, Client(cluster.address) as client:
        with pytest.raises(ValueError, match="no plots here"):
            compute_this(client=client)(fails)().compute()
        imported = client.run(lambda: "matplotlib" in __import__("sys").modules)
        assert imported and not any(imported.values()), imported
