"""%%distribute and %distribute in a real in-process IPython shell, on real dask workers."""

from __future__ import annotations

import os
import re
import threading
import time
import traceback

import numpy as np
import pytest
from conftest import (
    process_cluster,
    scheduler_task_count,
    wait_until,
)
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import dc_jupyter
from dc_jupyter import SerializationError

IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "compute_this"}


def run(shell, cell: str):
    """Run ``cell``; return (ExecutionResult, stdout, stderr)."""
    with capture_output(display=False) as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured.stdout, captured.stderr


def user_names(shell) -> dict:
    hidden = shell.user_ns_hidden
    return {
        k: v
        for k, v in shell.user_ns.items()
        if not k.startswith("_") and k not in IPYTHON_NAMES and k not in hidden
    }


# -- the extension -------------------------------------------------------------------


def test_load_twice_is_harmless_and_unload_removes_everything(ip):
    ip.run_line_magic("load_ext", "dc_jupyter")
    ip.run_line_magic("reload_ext", "dc_jupyter")
    assert ip.find_cell_magic("distribute") is not None
    assert ip.find_line_magic("distribute") is not None
    assert ip.user_ns["compute_this"] is dc_jupyter.compute_this
    ip.run_line_magic("unload_ext", "dc_jupyter")
    assert ip.find_cell_magic("distribute") is None
    assert ip.find_line_magic("distribute") is None
    assert "compute_this" not in ip.user_ns
    result = ip.run_cell("%%distribute\nx = 1")
    assert isinstance(result.error_in_exec, UsageError)  # "Cell magic not found"
    ip.run_line_magic("load_ext", "dc_jupyter")
    assert ip.find_cell_magic("distribute") is not None


def test_help_documents_every_option(ip):
    with capture_output() as captured:
        ip.run_cell("%%distribute?")
    text = captured.stdout + "".join(str(o.data) for o in captured.outputs)
    if "--map" not in text:  # the pager may bypass stdout: ask the inspector directly
        text = ip.object_inspect_text("%%distribute")
    assert "%%distribute [--async]" in text
    for option in (
        "--async",
        "-o NAME, --out NAME",
        "--local",
        "--retries N",
        "--resources <?GPU=1",
        "--timeout SECONDS",
        "--pull <?a,b",
        "--scheduler ADDRESS",
        "--map <?NAME in EXPR",
    ):
        assert re.search(r"\n\s+" + option, text), option


# -- the corpus: the same cell locally and on the cluster ---------------------------------

SETUP = {"n": 5, "seed": 3, "xs": [3, 1, 2], "scale": 2.5, "counter": 10, "word": "dask"}

CORPUS = [
    (
        "import_alias",
        "import numpy as np\nimport os.path as osp\nfrom math import sqrt as root\narr = np.arange(n) * scale\nroot(16), osp.basename('/a/b.txt')",
    ),
    (
        "numpy",
        "import numpy as np\nrng = np.random.default_rng(seed)\nsamples = rng.normal(size=n)\nmean = float(samples.mean())\nmean",
    ),
    (
        "closure",
        "def make_adder(k):\n    def add(v):\n        return v + k\n    return add\nadd3 = make_adder(3)\nadd3(n)",
    ),
    (
        "decorator",
        "import functools\ndef twice(f):\n    @functools.wraps(f)\n    def wrapper(*a):\n        return 2 * f(*a)\n    return wrapper\n@twice\ndef sq(v):\n    return v * v\nsq(n)",
    ),
    (
        "class_methods",
        "class Counter:\n    start = n\n    def __init__(self):\n        self.value = self.start\n    def bump(self, by=1):\n        self.value += by\n        return self\nc = Counter().bump().bump(scale)\nc.value",
    ),
    (
        "generator",
        "def evens(limit):\n    for i in range(limit):\n        if i % 2 == 0:\n            yield i\ntotal = sum(evens(n * 2))\nlist(evens(n))",
    ),
    (
        "try_except_finally",
        "try:\n    ratio = n / 0\nexcept ZeroDivisionError as err:\n    ratio = -1\n    message = str(err)\nfinally:\n    cleaned = True\nratio",
    ),
    (
        "loops",
        "acc = 0\nfor i in range(n):\n    if i == 3:\n        continue\n    acc += i\nwhile acc > 3:\n    acc -= 2\nelse:\n    ended = True\nacc, i",
    ),
    ("x_equals_x_plus_1", "counter = counter + 1\ncounter"),
    (
        "global_in_function",
        "def bump():\n    global counter\n    counter += 5\nbump()\nbump()\ncounter",
    ),
    (
        "comprehensions",
        "squares = [v * v for v in xs]\nlookup = {w: len(w) for w in [word, word * 2]}\nuniq = {v % 2 for v in xs}\ngen_total = sum(v for v in xs if v > 1)\nsquares",
    ),
    (
        "walrus",
        "if (size := len(xs)) > 2:\n    big = True\nfirst = [y for v in xs if (y := v * scale) > 3]\nsize, y",
    ),
    (
        "fstrings",
        "label = f'{word!r:>10} has {len(word)} letters, scale={scale:.2f}'\nprint(label)\nlabel",
    ),
    ("del_names", "temp = xs[0]\nkeep = temp * 2\ndel temp\nkeep"),
    ("del_notebook_name", "del word\nremaining = n"),
    ("augmented", "total = 1\ntotal += n\ntotal *= 3\ntotal -= 1\ntotal //= 2\ntotal **= 2\ntotal"),
    ("star_unpacking", "first, *middle, last = range(n + 2)\nhead, *tail = xs\n[*middle, *tail]"),
    ("time_magic", "%time timed = sum(range(n * 1000))\ntimed"),
    (
        "only_defs",
        "def area(r):\n    return 3.14 * r * r\n\ndef perimeter(r):\n    return 2 * 3.14 * r",
    ),
    ("lambda_reads_notebook", "f = lambda v: v * scale\nf(2)"),
    (
        "nested_functions",
        "def outer():\n    level = 1\n    def inner():\n        nonlocal level\n        level += n\n        return level\n    return inner()\nouter()",
    ),
    (
        "dict_and_sets",
        "d = dict(a=1, b=2)\nd.update({'c': n})\nkeys = sorted(d)\nvals = sorted(d.values())\nkeys, vals",
    ),
    (
        "print_and_stderr",
        "import sys\nprint('to stdout', n)\nprint('to stderr', file=sys.stderr)\nprint('back to stdout')\ndone = True",
    ),
    ("semicolon_silences", "value = n * 2\nvalue;"),
    ("no_result", "z = n + 1"),
    ("string_methods", "parts = word.upper().split('A')\njoined = '-'.join(parts)\njoined"),
    ("builtins_only", "nums = list(range(n))\nbiggest = max(nums)\nsorted(nums, reverse=True)[:2]"),
    ("conditional_assign", "if n > 100:\n    huge = True\nelse:\n    small = True\nsmall"),
    (
        "match_statement",
        "match xs:\n    case [a, *rest]:\n        picked = a\n        others = rest\n    case _:\n        picked = None\npicked",
    ),
    (
        "with_statement",
        "import contextlib\n@contextlib.contextmanager\ndef opened(text):\n    yield text.splitlines()\nwith opened('line1\\nline2') as got:\n    lines = list(got)\nlen(lines)",
    ),
    (
        "dataclass",
        "from dataclasses import dataclass\n@dataclass\nclass Point:\n    x: int\n    y: int = 0\n    def norm2(self):\n        return self.x ** 2 + self.y ** 2\np = Point(n, 2)\np.norm2()",
    ),
    (
        "exception_class",
        "class Oops(Exception):\n    pass\ntry:\n    raise Oops('x')\nexcept Oops as e:\n    caught = type(e).__name__\ncaught",
    ),
    ("recursion", "def fact(k):\n    return 1 if k <= 1 else k * fact(k - 1)\nfact(n)"),
    ("shell_escape", "listing = !echo hello\nlisting[0]"),
]


def normalise(value):
    """A comparable stand-in for values that do not compare by value across pickling."""
    import types

    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, np.ndarray):
        return ("array", value.tolist())
    if isinstance(value, np.random.Generator):
        return ("generator", value.bit_generator.state)
    if isinstance(value, (types.FunctionType, type)):
        return (type(value).__name__, value.__qualname__)
    if isinstance(value, BaseException):
        return ("exception", type(value).__name__, str(value))
    if type(value).__module__ == "__main__" and hasattr(value, "__dict__"):
        return ("instance", type(value).__qualname__, normalise(vars(value)))
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normalise(v) for v in value)
    if type(value).__name__ == "SList":  # IPython's list of lines from `!cmd`
        return list(value)
    return value


CALLS = {  # functions the cell defines must behave the same afterwards
    "closure": "add3(10)",
    "decorator": "sq(3), sq.__name__",
    "only_defs": "area(2), perimeter(1)",
    "class_methods": "Counter().bump(4).value",
    "lambda_reads_notebook": "f(4)",
    "recursion": "fact(6)",
    "dataclass": "Point(1, 1).norm2(), Point(3) == Point(3)",
    "generator": "list(evens(6))",
}


@pytest.mark.parametrize("name,cell", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_cell_behaves_as_if_run_locally(shell, name, cell):
    shell.user_ns.update(SETUP)
    local, local_out, local_err = run(shell, cell)
    assert local.error_in_exec is None and local.error_before_exec is None
    local_ns = normalise(user_names(shell))
    local_calls = normalise(shell.ev(CALLS[name])) if name in CALLS else None

    for key in list(user_names(shell)):
        del shell.user_ns[key]
    shell.user_ns.update(SETUP)
    before = shell.execution_count
    remote, remote_out, remote_err = run(shell, "%%distribute\n" + cell)
    assert remote.error_in_exec is None, remote.error_in_exec
    assert normalise(user_names(shell)) == local_ns
    if cell.endswith(";"):  # shown by neither
        assert remote.result is None and local.result is None
        assert before not in shell.user_ns["Out"]
    else:
        assert normalise(remote.result) == normalise(local.result)
    if remote.result is not None:
        assert normalise(shell.user_ns["_"]) == normalise(local.result)
        assert normalise(shell.user_ns["Out"][before]) == normalise(local.result)
    if name in CALLS:
        assert normalise(shell.ev(CALLS[name])) == local_calls
    if name != "time_magic":  # printed output, and `Out[n]: ...` shown the same way
        assert re.sub(r"Out\[\d+\]", "Out[N]", remote_out) == re.sub(
            r"Out\[\d+\]", "Out[N]", local_out
        )
        assert remote_err == local_err
    else:
        assert "Wall time" in remote_out


def test_cell_really_runs_on_a_worker_that_lacks_dc_jupyter(shell, client):
    run(
        shell,
        "%%distribute\nimport os\nfrom distributed import get_worker\nwhere = get_worker().address\npid = os.getpid()\ntry:\n    import dc_jupyter\n    has_it = True\nexcept ImportError:\n    has_it = False",
    )
    assert shell.user_ns["where"] in client.scheduler_info()["workers"]
    assert shell.user_ns["pid"] != os.getpid()
    assert shell.user_ns["has_it"] is False


def test_only_the_values_the_cell_reads_are_shipped(shell):
    shell.user_ns["used"] = 2
    shell.user_ns["unused_lock"] = threading.Lock()  # unpicklable: would fail if shipped
    result, _, _ = run(shell, "%%distribute\nout = used * 21")
    assert result.error_in_exec is None
    assert shell.user_ns["out"] == 42


def test_functions_from_a_cell_see_later_notebook_changes(shell):
    shell.user_ns.update(scale=2, counter=0)
    run(
        shell,
        "%%distribute\ndef scaled(v):\n    return v * scale\ndef bump():\n    global counter\n    counter += 1",
    )
    shell.run_cell("scale = 10\nbump()\nbump()")
    assert shell.ev("scaled(3)") == 30
    assert shell.user_ns["counter"] == 2


# -- errors ---------------------------------------------------------------------------


def test_remote_exception_has_original_type_and_points_at_cell_lines(shell):
    shell.user_ns["keep"] = "old"
    cell = "keep = 'new'\ndef check(v):\n    if v > 1:\n        raise ValueError(f'too big: {v}')\ncheck(5)\n"
    count = shell.execution_count
    result, _, err = run(shell, "%%distribute\n" + cell)
    exc = result.error_in_exec
    assert type(exc) is ValueError and str(exc) == "too big: 5"
    frames = traceback.extract_tb(exc.__traceback__)
    cell_frames = [
        f
        for f in frames
        if shell.compile._filename_map.get(f.filename) == count
        and not f.line.startswith("get_ipython()")  # the frame of the cell magic call itself
    ]
    assert [f.line for f in cell_frames] == ["check(5)", "raise ValueError(f'too big: {v}')"]
    assert [f.lineno for f in cell_frames] == [6, 5]  # line 1 is the %%distribute line
    assert shell.user_ns["keep"] == "old"  # failure: namespace untouched


def test_shown_traceback_is_an_ordinary_one(shell):
    with capture_output() as captured:
        shell.run_cell("%%distribute\na = 1\nb = 0\na / b\n")
    text = captured.stdout + captured.stderr
    assert "ZeroDivisionError" in text
    assert "----> 4 a / b" in text
    assert "_cell_worker" not in text and "_worker.py" not in text


def test_syntax_error_is_local_and_nothing_is_sent(shell, client):
    before = scheduler_task_count(client)
    result, _, _ = run(shell, "%%distribute\nx = (1,\ny = 2")
    assert isinstance(result.error_in_exec, SyntaxError)
    assert scheduler_task_count(client) == before


def test_name_that_exists_nowhere_is_a_name_error_before_sending(shell, client):
    before = scheduler_task_count(client)
    result, _, _ = run(shell, "%%distribute\ntotal = undefined_thing + 1")
    exc = result.error_in_exec
    assert type(exc) is NameError and "'undefined_thing'" in str(exc)
    assert "Nothing was sent" in str(exc)
    assert scheduler_task_count(client) == before
    assert "total" not in shell.user_ns


def test_name_bound_later_in_the_cell_or_builtin_is_not_an_error(shell):
    result, _, _ = run(
        shell, "%%distribute\ndef f():\n    return later * 2\nlater = 4\nv = f() + len('ab')"
    )
    assert result.error_in_exec is None
    assert shell.user_ns["v"] == 10


def test_unpicklable_value_is_named_with_its_type(shell, client):
    shell.user_ns["lock"] = threading.Lock()
    before = scheduler_task_count(client)
    result, _, _ = run(shell, "%%distribute\nwith lock:\n    x = 1")
    exc = result.error_in_exec
    assert isinstance(exc, SerializationError)
    assert "'lock'" in str(exc) and "_thread.lock" in str(exc) and "Nothing was sent" in str(exc)
    assert scheduler_task_count(client) == before


def test_unpicklable_variable_is_left_out_and_named_the_rest_comes_back(shell):
    shell.user_ns["keep"] = 1
    result, _, err = run(
        shell,
        "%%distribute\nimport io\nkeep = 2\nwith io.StringIO('a') as fh:\n    text = fh.read()",
    )
    assert result.error_in_exec is None
    assert (shell.user_ns["keep"], shell.user_ns["text"]) == (2, "a")
    assert "fh" not in shell.user_ns
    assert "'fh' was not brought back" in err and "_io.StringIO" in err


def test_unpicklable_last_expression_is_an_error_naming_its_type(shell):
    shell.user_ns["keep"] = 1
    result, _, _ = run(shell, "%%distribute\nimport threading\nkeep = 2\nthreading.Lock()")
    exc = result.error_in_exec
    assert (
        isinstance(exc, TypeError) and "last expression" in str(exc) and "_thread.lock" in str(exc)
    )
    assert shell.user_ns["keep"] == 1


@pytest.mark.parametrize(
    "line",
    [
        "--retries many",
        "--retries -1",
        "--timeout soon",
        "--timeout 0",
        "--bogus",
        "--resources GPU=lots",
        "-o 1bad",
        "--pull 'a b'",
        "--map x range(3)",
        "--map x in",
        "--local --scheduler tcp://127.0.0.1:1",
    ],
)
def test_bad_option_gives_usage_and_sends_nothing(shell, client, line):
    before = scheduler_task_count(client)
    with capture_output() as captured:
        result = shell.run_cell(f"%%distribute {line}\nx = 1")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "x" not in shell.user_ns
    assert scheduler_task_count(client) == before
    text = captured.stdout + captured.stderr
    assert "usage" in text.lower() or "--map" in text or "--local" in text


def test_pull_of_a_name_the_cell_does_not_assign_is_a_usage_error(shell):
    result, _, _ = run(shell, "%%distribute --pull a,nope\na = 1")
    assert isinstance(result.error_in_exec, UsageError)
    assert "'nope'" in str(result.error_in_exec)


# -- options --------------------------------------------------------------------------


def test_pull_brings_back_only_those_names(shell):
    run(shell, "%%distribute --pull a,b\na = 1\nb = 2\nc = 3")
    assert (shell.user_ns["a"], shell.user_ns["b"]) == (1, 2)
    assert "c" not in shell.user_ns


def test_local_runs_in_this_process_through_pickling(shell, client):
    before = scheduler_task_count(client)
    shell.user_ns["lock"] = threading.Lock()
    result, _, _ = run(shell, "%%distribute --local\nimport os\npid = os.getpid()\nprint('here')")
    assert result.error_in_exec is None
    assert shell.user_ns["pid"] == os.getpid()
    assert scheduler_task_count(client) == before
    result, _, _ = run(shell, "%%distribute --local\nwith lock:\n    pass")  # same checks
    assert isinstance(result.error_in_exec, SerializationError)


def test_out_keeps_the_handle(shell):
    run(shell, "%%distribute -o handle\nanswer = 42\nanswer")
    handle = shell.user_ns["handle"]
    assert isinstance(handle, dc_jupyter.JobFuture)
    assert handle.done() and handle.status == "finished"


def test_async_returns_at_once_and_updates_namespace_when_done(shell, client):
    shell.user_ns["delay"] = 1.0
    start = time.monotonic()
    result, _, _ = run(
        shell, "%%distribute --async -o job\nimport time\ntime.sleep(delay)\nfinished = 'yes'"
    )
    assert result.error_in_exec is None and result.result is None
    assert time.monotonic() - start < 0.9
    assert "finished" not in shell.user_ns
    handle = shell.user_ns["job"]
    assert isinstance(handle, dc_jupyter.CellFuture)
    assert handle.result(timeout=30) is None  # the cell has no last expression
    assert shell.user_ns.get("finished") == "yes"  # in the namespace once result() returns
    assert handle.done()


def test_async_failure_leaves_namespace_and_reports(shell, capsys):
    result, _, _ = run(shell, "%%distribute --async -o job\nlost = 1\nraise KeyError('k')")
    assert result.error_in_exec is None
    handle = shell.user_ns["job"]
    with pytest.raises(KeyError):
        handle.result(timeout=30)
    # Dask runs done-callbacks one after another on one thread: once this one
    # has run, the cell's own callback (added first) has finished.
    handled = threading.Event()
    handle.add_done_callback(lambda _: handled.set())
    assert handled.wait(30)
    assert "%%distribute --async cell failed: KeyError: 'k'" in capsys.readouterr().err
    assert "lost" not in shell.user_ns


@pytest.mark.parametrize("local", [False, True], ids=["cluster", "local"])
def test_a_cell_failing_midway_binds_none_of_its_names(shell, local):
    line = "%%distribute --local" if local else "%%distribute"
    result, _, _ = run(shell, f"{line}\nfirst = 1\nraise KeyError('midway')\nsecond = 2\nsecond")
    assert isinstance(result.error_in_exec, KeyError)
    assert "first" not in shell.user_ns and "second" not in shell.user_ns


def test_timeout_raises_and_cancels_remote_work(shell, client):
    before = scheduler_task_count(client)
    start = time.monotonic()
    # short naps: stoppable on the worker, which the next tests share
    result, _, _ = run(
        shell,
        "%%distribute --timeout 1\nimport time\nfor _ in range(600):\n    time.sleep(0.05)\nslow = 1",
    )
    assert isinstance(result.error_in_exec, TimeoutError)
    assert "1 s" in str(result.error_in_exec) and "cancelled" in str(result.error_in_exec)
    assert time.monotonic() - start < 15
    assert wait_until(lambda: scheduler_task_count(client) == before, timeout=15)
    assert "slow" not in shell.user_ns


def test_resources_reach_the_scheduler(shell, tmp_path):
    # The session workers offer no resources (asking for some there is a clear
    # error, see test_bad_input), so this uses one worker that offers them.
    from distributed import Client

    with process_cluster(tmp_path, extra_args=["--resources", "GPU=1,MEM=2"]) as gpu:
        try:
            result, _, _ = run(
                shell,
                f"%%distribute --async -o job --scheduler {gpu.address} --resources GPU=1,MEM=2\n"
                "import time\ntime.sleep(1.5)\nx = 1",
            )
            assert result.error_in_exec is None, result.error_in_exec
            handle = shell.user_ns["job"]
            with Client(gpu.address, timeout="30s", set_as_default=False) as c:
                restrictions = c.run_on_scheduler(
                    lambda dask_scheduler, key=handle.key: getattr(
                        dask_scheduler.tasks.get(key), "resource_restrictions", None
                    )
                )
            # Besides dc_jupyter's own version-gate resource (backends.dask.versions).
            mine = {k: v for k, v in restrictions.items() if not k.startswith("dc_jupyter-env-")}
            assert mine == {"GPU": 1.0, "MEM": 2.0}
            handle.result(timeout=30)
            assert shell.user_ns["x"] == 1
        finally:
            dc_jupyter.close()  # before its cluster stops


def test_resources_no_worker_has_are_refused_before_sending(shell, client):
    before = scheduler_task_count(client)
    result, _, _ = run(shell, "%%distribute --resources GPU=1\nx = 1")
    assert isinstance(result.error_in_exec, ValueError)
    assert "needs resources {'GPU': 1" in str(result.error_in_exec)
    assert "nothing was sent" in str(result.error_in_exec)
    assert "x" not in shell.user_ns
    assert scheduler_task_count(client) == before


def test_retries_rerun_a_failed_cell(shell, tmp_path):
    shell.user_ns["marker"] = str(tmp_path / "attempts")
    cell = (
        "import os\nprint('attempt')\n"
        "with open(marker, 'a') as fh:\n    fh.write('x')\n"
        "if os.path.getsize(marker) < 2:\n    raise RuntimeError('flaky')\nok = True"
    )
    result, out, _ = run(shell, "%%distribute --retries 2\n" + cell)
    assert result.error_in_exec is None
    assert shell.user_ns["ok"] is True
    assert (tmp_path / "attempts").read_text() == "xx"
    assert "attempt" in out
    (tmp_path / "attempts").unlink()
    result, _, _ = run(shell, "%%distribute\n" + cell)
    assert isinstance(result.error_in_exec, RuntimeError)


def test_retries_rerun_failed_sweep_elements(shell, tmp_path):
    shell.user_ns["markers"] = str(tmp_path)
    cell = (
        "import os\nmarker = os.path.join(markers, str(i))\n"
        "first = not os.path.exists(marker)\nopen(marker, 'a').close()\n"
        "if first:\n    raise RuntimeError(f'first try of {i}')\nsquare = i * i"
    )
    result, _, _ = run(shell, "%%distribute --retries 1 --map i in range(4)\n" + cell)
    assert result.error_in_exec is None, result.error_in_exec
    assert shell.user_ns["square"] == [0, 1, 4, 9]
    for path in tmp_path.iterdir():
        path.unlink()
    result, _, _ = run(shell, "%%distribute --map i in range(2)\n" + cell)
    assert isinstance(result.error_in_exec, RuntimeError)


def test_scheduler_option_runs_on_that_cluster_for_this_cell_only(ip, cluster):
    ip.reset()
    dc_jupyter.close()
    result, _, _ = run(
        ip,
        f"%%distribute --scheduler {cluster.address}\nfrom distributed import get_worker\nsched = get_worker().scheduler.address",
    )
    assert result.error_in_exec is None
    assert ip.user_ns["sched"] == cluster.address
    from dc_jupyter.backends.dask import connection

    assert connection._explicit is None  # nothing chosen for later cells


def test_map_runs_once_per_element_in_parallel_in_input_order(shell):
    shell.user_ns["base"] = 100
    result, out, _ = run(
        shell,
        "%%distribute --map x in [5, 1, 4, 2]\nimport time\nfrom distributed import get_worker\n"
        "time.sleep(0.2 * x)\nprint('item', x)\nvalue = base + x\nwhere = get_worker().address\nvalue * 2",
    )
    assert result.error_in_exec is None, result.error_in_exec
    assert shell.user_ns["value"] == [105, 101, 104, 102]
    assert result.result == [210, 202, 208, 204]
    assert len(set(shell.user_ns["where"])) == 2  # both workers took elements
    # each printed line is marked with its element, as ipyparallel marks engines
    printed = sorted(line for line in out.splitlines() if "item" in line)
    assert printed == ["[x=1] item 1", "[x=2] item 2", "[x=4] item 4", "[x=5] item 5"]
    assert "x" not in shell.user_ns


def test_map_failure_names_the_element(shell):
    result, _, _ = run(shell, "%%distribute --map v in [1, 0, 2]\nr = 1 / v")
    exc = result.error_in_exec
    assert isinstance(exc, ZeroDivisionError)
    assert any("item 1" in note for note in getattr(exc, "__notes__", []))
    assert "r" not in shell.user_ns


def test_async_map_returns_at_once_then_every_name_is_a_list_in_input_order(shell):
    shell.user_ns["base"] = 10
    start = time.monotonic()
    result, _, _ = run(
        shell,
        "%%distribute --async -o sweep --map x in [3, 1, 2, 0]\nimport time\n"
        "time.sleep(0.5 * x)\nvalue = base + x\nsquare = x * x\nsquare",
    )
    returned = time.monotonic() - start
    handle = shell.user_ns["sweep"]
    assert result.error_in_exec is None and result.result is None
    assert not handle.done() and returned < 1.5  # element 3 alone sleeps 1.5 s
    assert "value" not in shell.user_ns and "square" not in shell.user_ns
    assert isinstance(handle, dc_jupyter.SweepFuture)
    # result() is each element's last value, and returns once the names are in
    assert handle.result(timeout=30) == [9, 1, 4, 0]
    # all at once, each a list in input order (not in finishing order: 0, 1, 2, 3)
    assert shell.user_ns["value"] == [13, 11, 12, 10]
    assert shell.user_ns["square"] == [9, 1, 4, 0]
    assert handle.done() and handle.status == "finished"
    assert "x" not in shell.user_ns


def test_async_map_failure_leaves_namespace_untouched(shell):
    import contextlib
    import io

    shell.user_ns["kept"] = "before"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):  # where the done-callback reports
        result, _, _ = run(
            shell,
            "%%distribute --async -o sweep --map v in [1, 0, 2]\nkept = 'after'\nr = 1 / v",
        )
        assert result.error_in_exec is None
        handle = shell.user_ns["sweep"]
        with pytest.raises(ZeroDivisionError) as raised:
            handle.result(timeout=30)
        assert any("item 1" in note for note in raised.value.__notes__)
        assert wait_until(lambda: "namespace was not changed" in stderr.getvalue(), timeout=10)
    assert "ZeroDivisionError" in stderr.getvalue()
    assert shell.user_ns["kept"] == "before" and "r" not in shell.user_ns


# -- live output ------------------------------------------------------------------------


def test_output_streams_while_the_cell_runs(shell):
    """Chunks reach the notebook's stdout before the cell finishes (not only at the end)."""
    import io
    import sys

    seen: list[tuple[float, str]] = []

    class Recorder(io.StringIO):
        def write(self, text):
            seen.append((time.monotonic(), text))
            return super().write(text)

    old = sys.stdout
    sys.stdout = Recorder()
    try:
        start = time.monotonic()
        result = shell.run_cell(
            "%%distribute\nimport time\nprint('early')\ntime.sleep(1.5)\nprint('late')"
        )
        end = time.monotonic()
    finally:
        sys.stdout = old
    assert result.error_in_exec is None
    early = next(t for t, text in seen if "early" in text)
    late = next(t for t, text in seen if "late" in text)
    assert early < late and early - start < end - start - 1.0  # arrived during the sleep


def test_print_loop_is_coalesced_not_flooded(shell, client):
    result, out, _ = run(shell, "%%distribute\nfor i in range(5000):\n    print(i)")
    assert result.error_in_exec is None
    assert out.split() == [str(i) for i in range(5000)]
    # Passed on in a handful of events, which the scheduler does not keep.
    assert client.get_events("dc_jupyter-output") == ()


# -- %distribute ----------------------------------------------------------------------


def test_line_magic_shows_and_switches_cluster(ip, cluster):
    ip.reset()
    info = ip.run_line_magic("distribute", f"connect {cluster.address}")
    text = repr(info)
    assert cluster.address in text and "2 workers" in text and "2 threads" in text
    assert "GiB memory" in text and "dashboard: http://" in text
    assert cluster.address in ip.run_line_magic("distribute", "").info["address"]
    assert 'href="http' in info._repr_html_()
    info = ip.run_line_magic("distribute", f"connect --scheduler-file {cluster.scheduler_file}")
    assert info.info["address"] == cluster.address
    with capture_output() as captured:
        ip.run_line_magic("distribute", "close")
    assert "closed" in captured.stdout
    from dc_jupyter.backends.dask import connection

    assert connection._explicit is None
    with pytest.raises(UsageError):
        ip.run_line_magic("distribute", "conect tcp://x:1")
    with pytest.raises(UsageError):
        ip.run_line_magic("distribute", "local many")


def test_line_magic_local_starts_an_embedded_cluster(ip):
    info = ip.run_line_magic("distribute", "local 1")
    assert info.info["embedded"] is True and info.info["workers"] == 1
    ip.user_ns["k"] = 3
    result, _, _ = run(ip, "%%distribute\nkk = k * k")
    assert result.error_in_exec is None and ip.user_ns["kk"] == 9
    ip.run_line_magic("distribute", "close")
