"""Code runs on the cluster as it runs in the notebook (issue 16, inline parts).

Each case runs locally (plain IPython, or ``.local()``) and remotely, on real
``dask worker`` processes that cannot import dc_jupyter, and compares the two:
decorated functions inside jobs (recursion, helpers, fan-out, partials,
methods), ``async def`` and top-level ``await``, cells compiled as IPython
compiles them, and in-place changes to captured values.
"""

from __future__ import annotations

import nbformat
import pytest
from conftest import kernel_env, scheduler_task_count, wait_until
from IPython.utils.capture import capture_output
from nbclient import NotebookClient

FUNCTIONS = """
import asyncio, functools
from dc_jupyter import compute_this

@compute_this()
def fact(n):
    return 1 if n < 2 else n * fact(n - 1)

@compute_this()
def square(x):
    return x * x

@compute_this()
def square_plus_one(x):
    return square(x) + 1          # a helper: a plain call inside the job

@compute_this()
def fan_out(n):
    return square.map(range(n)).compute()   # runs on the same cluster

@compute_this()
def fan_out_one(n):
    return square(n).compute() + 1

@compute_this()
def add(a, b):
    return a + b

@compute_this()
def through_partial(x):
    return functools.partial(add, 2)(x)

@compute_this()
async def later(x):
    await asyncio.sleep(0.01)
    return x + 1

@compute_this()
def fails_inside(x):
    return square.map([x, "boom"]).compute()

class K:
    def __init__(self, k):
        self.k = k

    @compute_this()
    def times(self, y):
        return self.k * y

@compute_this()
def use_method(k, y):
    return k.times(y)            # a decorated method, inline on the worker

@compute_this()
def make_k(k):
    return K(k)
"""


def run(shell, cell: str):
    """Run ``cell``; return (ExecutionResult, stdout, stderr); fail on an error."""
    with capture_output(display=False) as captured:
        result = shell.run_cell(cell, store_history=True)
    error = result.error_before_exec or result.error_in_exec
    return result, captured.stdout, captured.stderr, error


def value(shell, expression: str):
    _, _, err, error = run(shell, f"__value = {expression}")
    assert error is None, err
    return shell.user_ns.pop("__value")


# -- decorated functions inside jobs -------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        ("fact(5).compute()", "fact.local(5)"),
        ("square_plus_one(3).compute()", "square_plus_one.local(3)"),
        ("fan_out(4).compute()", "[x * x for x in range(4)]"),
        ("fan_out_one(3).compute()", "10"),
        ("through_partial(3).compute()", "through_partial.local(3)"),
        ("compute_this()(functools.partial(add, 2))(3).compute()", "add.local(2, 3)"),
        ("functools.partial(add, 2)(3).compute()", "add.local(2, 3)"),
        ("K(3).times(4).compute()", "K.times.local(K(3), 4)"),
        ("use_method(K(2), 5).compute()", "10"),
        ("later(1).compute()", "asyncio.run(later.__wrapped__(1))"),
        ("later.map([1, 2]).compute()", "[2, 3]"),
    ],
)
def test_remote_call_equals_local_call(shell, remote, local):
    assert run(shell, FUNCTIONS)[3] is None
    assert value(shell, remote) == value(shell, local)


def test_the_same_calls_on_the_local_backend(shell):
    assert run(shell, FUNCTIONS)[3] is None
    for expression, expected in [
        ("fact(5).compute(backend='local')", 120),
        ("fan_out(3).compute(backend='local')", [0, 1, 4]),
        ("K(3).times(4).compute(backend='local')", 12),
        ("later(1).compute(backend='local')", 2),
    ]:
        assert value(shell, expression) == expected, expression


def test_an_error_in_work_sent_from_a_worker_is_raised_as_itself(shell, client):
    assert run(shell, FUNCTIONS)[3] is None
    _, _, err, error = run(shell, "fails_inside(3).compute()")
    assert isinstance(error, TypeError)
    assert "can't multiply sequence" in str(error)
    # Neither the job nor the calls it sent are left on the scheduler.
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=30)


def test_an_object_back_from_a_worker_keeps_its_decorated_method(shell):
    assert run(shell, FUNCTIONS)[3] is None
    k = value(shell, "make_k(7).compute()")
    # The notebook's own class and decorated function, not the workers' stand-in.
    assert type(k) is shell.user_ns["K"]
    assert type(vars(shell.user_ns["K"])["times"]).__name__ == "RemoteFunction"
    assert value(shell, "K(3).times(4)").__class__.__name__ == "Job"
    assert k.times(2).compute() == 14


# -- cells ---------------------------------------------------------------------------


def both_ways(shell, setup: str, cell: str, names: list[str]):
    """Run ``setup`` then ``cell`` plainly, then again with ``%%distribute``; return
    (local values, remote values, remote stderr) of ``names``."""
    outcomes = []
    for magic in ("", "%%distribute\n"):
        assert run(shell, setup)[3] is None
        _, _, err, error = run(shell, magic + cell)
        assert error is None, err
        outcomes.append(({n: shell.user_ns[n] for n in names}, err))
    (local, _), (remote, err) = outcomes
    return local, remote, err


def test_annotations_are_objects_and_the_notebooks_class(shell):
    cell = (
        "class Point:\n    pass\n"
        "def move(p: Point, by: int = 1) -> Point:\n    return p\n"
        "annotations = move.__annotations__\n"
        "x: int = 3\n"
    )
    local, remote, _ = both_ways(shell, "pass", cell, ["annotations"])
    assert local["annotations"]["by"] is int
    assert remote["annotations"]["by"] is int
    assert remote["annotations"]["p"] is shell.user_ns["Point"]
    assert remote["annotations"]["return"] is shell.user_ns["Point"]


def test_a_function_reads_a_global_the_cell_binds_later(shell):
    cell = (
        "def over(values):\n    return [v for v in values if v > threshold]\n"
        "threshold = 2\n"
        "picked = over([1, 2, 3, 4])\n"
    )
    local, remote, _ = both_ways(shell, "pass", cell, ["picked"])
    assert local == remote == {"picked": [3, 4]}
    # Back in the notebook the function sees the notebook's later changes.
    run(shell, "threshold = 3")
    assert value(shell, "over([1, 2, 3, 4])") == [4]


def test_a_function_may_read_a_global_that_exists_nowhere_yet(shell):
    cell = "def above(v):\n    return v > limit\n"
    _, _, err, error = run(shell, "%%distribute\n" + cell)
    assert error is None, err  # locally defining it is fine too: `limit` is read when called
    _, _, _, error = run(shell, "above(2)")
    assert isinstance(error, NameError)
    run(shell, "limit = 1")
    assert value(shell, "above(2)") is True
    _, _, err, error = run(shell, "%%distribute\nremote = above(0)\n")
    assert error is None, err
    assert shell.user_ns["remote"] is False


def test_top_level_await_runs_as_ipython_runs_it(shell):
    setup = (
        "import asyncio\nasync def fetch(x):\n    await asyncio.sleep(0.01)\n    return x * 10\n"
    )
    cell = (
        "await asyncio.sleep(0.01)\n"
        "first = await fetch(1)\n"
        "both = await asyncio.gather(fetch(2), fetch(3))\n"
        "last = await fetch(4)\n"
        "last + 1\n"
    )
    local, remote, _ = both_ways(shell, setup, cell, ["first", "both", "last", "_"])
    assert local == remote
    assert remote["_"] == 41


def test_decorated_calls_in_a_cell(shell):
    assert run(shell, FUNCTIONS)[3] is None
    cell = (
        "computed = fact(5).compute()\nmapped = square.map([1, 2]).compute()\n"
        "method = K(3).times(4).compute()\n"
    )
    local, remote, err = both_ways(shell, "pass", cell, ["computed", "mapped", "method"])
    assert local == remote == {"computed": 120, "mapped": [1, 4], "method": 12}
    # Calling them (sending work from the worker) does not change them in place.
    assert "changed in place" not in err, err
    assert type(shell.user_ns["square"]).__name__ == "RemoteFunction"


def test_in_place_changes_come_back_with_a_note(shell):
    setup = (
        "class Box:\n    pass\n"
        "results = [1]\nd = {'a': 1}\nobj = Box()\nuntouched = [9]\nkept = untouched\n"
    )
    cell = "results.append(2)\nd['b'] = 2\nobj.attr = 42\ntotal = sum(untouched)\n"
    names = ["results", "d"]
    local, remote, err = both_ways(shell, setup, cell, names)
    assert local == remote
    assert shell.user_ns["obj"].attr == 42
    assert "results, d, obj changed in place" in err
    # A value the cell only read is not replaced: names that share it still do.
    assert shell.user_ns["kept"] is shell.user_ns["untouched"]


def test_in_place_changes_are_not_brought_back_by_pull_or_a_failed_cell(shell):
    run(shell, "results = [1]")
    _, _, err, error = run(shell, "%%distribute --pull n\nresults.append(2)\nn = 1\n")
    assert error is None, err
    assert shell.user_ns["results"] == [1]
    _, _, err, error = run(shell, "%%distribute\nresults.append(3)\nraise ValueError('no')\n")
    assert isinstance(error, ValueError)
    assert shell.user_ns["results"] == [1]


def test_the_in_place_check_can_be_switched_off(shell):
    import dask

    run(shell, "results = [1]")
    with dask.config.set({"dc_jupyter.check-in-place": False}):
        _, _, err, error = run(shell, "%%distribute\nresults.append(2)\nn = len(results)\n")
    assert error is None, err
    # The cell saw its change; the notebook keeps its own value, and no note claims otherwise.
    assert shell.user_ns["n"] == 2 and shell.user_ns["results"] == [1]
    assert "changed in place" not in err


# -- a real kernel ---------------------------------------------------------------------


KERNEL_CELLS = [
    "%load_ext dc_jupyter\n" + FUNCTIONS,
    # 1: functions, remote against local
    "print(fact(5).compute() == fact.local(5), K(3).times(4).compute(), fan_out(3).compute(),"
    " later(1).compute(), later(1).compute(backend='local'))",
    # 2: top-level await in a cell, on the cluster and with --local (the kernel's
    # own event loop runs while the cell does)
    "%%distribute\nr = await later.local(5)\nr * 2",
    "%%distribute --local\nq = await later.local(6)\nq * 2",
    # 4: in-place change
    "results = []",
    "%%distribute\nresults.append(fact(3).compute())",
    "print(results, r, q)",
]


@pytest.fixture(scope="module")
def kernel_notebook(cluster, tmp_path_factory):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in KERNEL_CELLS]
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=True)
    env = kernel_env(cluster.address)
    client.execute(env=env, cwd=str(tmp_path_factory.mktemp("kernel")))
    return nb


def text_of(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] == "execute_result":
            parts.append(output["data"]["text/plain"])
        elif output["output_type"] == "error":
            parts.append(f"{output['ename']}: {output['evalue']}")
    return "".join(parts)


def test_in_a_kernel_functions_match_local_calls(kernel_notebook):
    assert text_of(kernel_notebook.cells[1]).strip() == "True 12 [0, 1, 4] 2 2"


def test_in_a_kernel_top_level_await_and_in_place_changes(kernel_notebook):
    assert text_of(kernel_notebook.cells[2]).strip().endswith("12")
    assert text_of(kernel_notebook.cells[3]).strip().endswith("14")
    assert "results changed in place" in text_of(kernel_notebook.cells[5])
    assert text_of(kernel_notebook.cells[6]).strip() == "[6] 6 7"
