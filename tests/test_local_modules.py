"""Local code travels with the work; packages the workers lack are named before sending.

A ``mylib.py`` and a package ``mypkg`` sit next to the "notebook" (a temp
directory that is the IPython shell's, or the kernel's, working directory and
on its ``sys.path``). The workers are real ``dask worker`` processes started in
ANOTHER temp directory, so they cannot import them, nor dc_jupyter, nor
``nbformat`` (blocked by their preload: an installed package they lack).
Every remote outcome is compared with the same code run locally.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from conftest import HERE, connected_shell, ipython_shell, process_cluster, wait_until
from IPython.utils.capture import capture_output
from nbclient import NotebookClient

from dc_jupyter.backends.dask import modules as ship_state

MYLIB_V1 = """
VERSION = 1

class Square:
    def __init__(self, side):
        self.side = side

    def area(self):
        return self.side * self.side


def shout(text):
    return text.upper() + "!"
"""

MYLIB_V2 = MYLIB_V1.replace("VERSION = 1", "VERSION = 2").replace(
    'text.upper() + "!"', 'text.upper() + "!!"'
)

PKG_INIT = "from .sub import triple\n\nNAME = 'mypkg'\n"
PKG_SUB = "def triple(x):\n    return 3 * x\n"

#: Worker preload: no dc_jupyter (as everywhere in the tests) and no nbformat.
BLOCK_PRELOAD = """
import sys
sys.modules["dc_jupyter"] = None
sys.modules["nbformat"] = None
"""


def write(path: Path, text: str) -> None:
    """Write ``text`` and move the file's time forward, so a change is always seen
    (two writes within the clock's resolution would look alike)."""
    path.write_text(textwrap.dedent(text))
    stamp = path.stat().st_mtime_ns + 2_000_000_000
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory):
    nb = tmp_path_factory.mktemp("notebook")
    write(nb / "mylib.py", MYLIB_V1)
    (nb / "mypkg").mkdir()
    write(nb / "mypkg" / "__init__.py", PKG_INIT)
    write(nb / "mypkg" / "sub.py", PKG_SUB)
    return nb


@pytest.fixture(scope="module")
def far_cluster(tmp_path_factory):
    """Two workers whose working directory is not the notebook's, lacking nbformat."""
    work = tmp_path_factory.mktemp("workers-elsewhere")
    preload = work / "block_preload.py"
    preload.write_text(BLOCK_PRELOAD)
    with process_cluster(work, n_workers=2, preload=str(preload)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def far_client(far_cluster):
    from distributed import Client

    with Client(far_cluster.address, timeout="30s", set_as_default=False) as c:
        yield c


def _forget_local_modules():
    ours = ("mylib", "mypkg", "helpers", "uses_helpers", "offlib", "extrapkg")
    for name in [n for n in sys.modules if n.split(".")[0] in ours]:
        del sys.modules[name]
    ship_state._units.clear()


@pytest.fixture
def shell(notebook_dir, far_cluster, monkeypatch):
    """An IPython shell working in the notebook directory, connected to the far cluster."""
    monkeypatch.chdir(notebook_dir)
    monkeypatch.syspath_prepend(str(notebook_dir))
    _forget_local_modules()
    write(notebook_dir / "mylib.py", MYLIB_V1)
    ip = connected_shell(ipython_shell(), far_cluster.address)
    ip.run_cell("from dc_jupyter import compute_this")
    yield ip
    _forget_local_modules()


def run(shell, cell: str):
    with capture_output(display=False) as captured:
        result = shell.run_cell(cell, store_history=True)
    return result, captured.stdout, captured.stderr


def ok(shell, cell: str):
    result, out, err = run(shell, cell)
    assert result.error_in_exec is None and result.error_before_exec is None, (out, err)
    return result.result


def test_the_workers_really_cannot_import_the_notebook_modules(far_client, notebook_dir):
    cwd = far_client.run(os.getcwd)
    assert all(Path(d) != notebook_dir for d in cwd.values())

    def try_import():
        try:
            __import__("mylib_that_is_never_shipped")
        except ImportError:
            return "missing"
        return "found"

    # The notebook dir is not on their path: a module there that nothing sent is missing.
    write(notebook_dir / "mylib_that_is_never_shipped.py", "X = 1\n")
    assert set(far_client.run(try_import).values()) == {"missing"}


def test_import_mylib_in_a_cell(shell):
    ok(shell, "import mylib\nlocal = mylib.shout('hi'), mylib.Square(4).area()")
    cell = "import mylib\nloud = mylib.shout('hi')\narea = mylib.Square(4).area()\nloud, area"
    assert ok(shell, "%%distribute\n" + cell) == shell.user_ns["local"] == ("HI!", 16)


def test_from_mylib_import_in_a_cell_without_importing_it_here_first(shell):
    assert "mylib" not in sys.modules
    assert ok(shell, "%%distribute\nfrom mylib import shout\nshout('x')") == "X!"
    assert shell.user_ns["shout"]("y") == "Y!"  # the name came back and works here


def test_an_instance_of_a_mylib_class_as_an_argument(shell):
    ok(shell, "import mylib\n@compute_this\ndef area(sq):\n    return sq.area()")
    assert (
        ok(shell, "area(mylib.Square(5)).compute()")
        == 25
        == ok(shell, "area.local(mylib.Square(5))")
    )


def test_mylib_used_inside_a_function_body(shell):
    ok(
        shell,
        "import mylib\n@compute_this\ndef both(x):\n    import mypkg\n"
        "    return mylib.shout(x), mypkg.triple(len(x))",
    )
    assert ok(shell, "both('ab').compute()") == ("AB!", 6) == ok(shell, "both.local('ab')")


def test_a_mylib_function_passed_to_map(shell):
    ok(shell, "from mylib import shout\nloud = compute_this(shout)")
    assert ok(shell, "loud.map(['a', 'b', 'c']).compute()") == ["A!", "B!", "C!"]


def test_a_package_next_to_the_notebook(shell):
    cell = "%%distribute\nimport mypkg\nfrom mypkg.sub import triple\nmypkg.NAME, triple(7)"
    assert ok(shell, cell) == ("mypkg", 21)


def test_a_local_module_that_imports_another_one(shell, notebook_dir):
    write(notebook_dir / "helpers.py", "def double(x):\n    return 2 * x\n")
    write(
        notebook_dir / "uses_helpers.py",
        """
        import helpers

        try:  # optional: the workers lack it, and that is fine
            import nbformat
        except ImportError:
            nbformat = None


        def quad(x):
            return helpers.double(helpers.double(x))
        """,
    )
    assert ok(shell, "%%distribute\nimport uses_helpers\nuses_helpers.quad(2)") == 8


def test_an_import_the_cell_guards_is_not_refused(shell):
    cell = "try:\n    import nbformat\nexcept ImportError:\n    nbformat = None\nnbformat is None"
    assert ok(shell, "%%distribute\n" + cell) is True  # the workers lack it; the cell copes


def test_an_edited_module_is_sent_again(shell, notebook_dir):
    ok(shell, "%load_ext autoreload\n%autoreload 2")
    try:
        ok(shell, "import mylib\n@compute_this\ndef version(sq):\n    return mylib.VERSION")
        assert ok(shell, "version(mylib.Square(1)).compute()") == 1
        write(notebook_dir / "mylib.py", MYLIB_V2)  # as in an editor, between two cells
        assert ok(shell, "mylib.VERSION") == 2  # autoreload saw it here...
        assert ok(shell, "version(mylib.Square(1)).compute()") == 2  # ...and the workers too
        assert ok(shell, "%%distribute\nimport mylib\nmylib.shout('a')") == "A!!"
    finally:
        ok(shell, "%autoreload 0")


def test_switched_off_the_workers_must_have_it_and_the_error_says_so(shell, notebook_dir):
    import dask

    write(notebook_dir / "offlib.py", "X = 1\n")  # never sent to this cluster
    marker = notebook_dir / "cell-ran"
    with dask.config.set({"dc_jupyter.ship-local-modules": False}):
        result, _, _ = run(
            shell, f"%%distribute\nopen({str(marker)!r}, 'w').close()\nimport offlib\nx = 1"
        )
    error = result.error_in_exec
    assert isinstance(error, ModuleNotFoundError) and error.name == "offlib"
    assert "Nothing was sent" in str(error) and "2 of 2 workers" in str(error)
    assert "dc_jupyter.ship-modules" in str(error)
    assert not marker.exists() and "x" not in shell.user_ns
    assert ok(shell, "%%distribute\nimport offlib\nofflib.X") == 1  # on again: it travels


def test_ship_modules_adds_packages_by_name(shell, notebook_dir):
    import dask

    (notebook_dir / "extrapkg").mkdir(exist_ok=True)
    write(notebook_dir / "extrapkg" / "__init__.py", "def twice(x):\n    return 2 * x\n")
    cell = "%%distribute\nimport extrapkg\nextrapkg.twice(2)"
    with dask.config.set({"dc_jupyter.ship-local-modules": False}):
        result, _, _ = run(shell, cell)
        assert isinstance(result.error_in_exec, ModuleNotFoundError)
        with dask.config.set({"dc_jupyter.ship-modules": ["extrapkg"]}):
            assert ok(shell, cell) == 4


def test_a_package_the_workers_lack_is_named_before_sending(shell, far_cluster, notebook_dir):
    marker = notebook_dir / "cell-ran"
    result, _, _ = run(
        shell, f"%%distribute\nopen({str(marker)!r}, 'w').close()\nimport nbformat\ny = 1"
    )
    error = result.error_in_exec
    assert isinstance(error, ModuleNotFoundError) and error.name == "nbformat"
    message = str(error)
    assert "No module named 'nbformat' on 2 of 2 workers" in message
    assert "pip install nbformat" in message and "python -m dc_jupyter requirements" in message
    assert "Nothing was sent" in message
    assert not marker.exists() and "y" not in shell.user_ns


def test_a_function_whose_argument_needs_a_missing_package(shell, notebook_dir):
    marker = notebook_dir / "function-ran"
    ok(
        shell,
        f"@compute_this\ndef keys(node):\n    open({str(marker)!r}, 'w').close()\n    return sorted(node)",
    )
    result, _, _ = run(shell, "import nbformat\nkeys(nbformat.from_dict({'a': 1})).compute()")
    error = result.error_in_exec
    assert isinstance(error, ModuleNotFoundError) and error.name == "nbformat"
    assert "keys() needs it there" in str(error)
    assert not marker.exists()
    # Plain data goes through: only what the work refers to is checked.
    assert ok(shell, "keys({'b': 2, 'a': 1}).compute()") == ["a", "b"]


def test_a_worker_that_joins_later_gets_the_modules_and_is_checked(
    notebook_dir, tmp_path, monkeypatch
):
    """A worker started after the first job: the plugin gives it the notebook's
    modules, and the packages checked so far are checked again on it."""
    from conftest import BLOCK_PRELOAD as NO_DC_JUPYTER
    from distributed import Client

    monkeypatch.chdir(notebook_dir)
    monkeypatch.syspath_prepend(str(notebook_dir))
    _forget_local_modules()
    write(notebook_dir / "mylib.py", MYLIB_V1)
    no_nbformat = tmp_path / "no_nbformat.py"
    no_nbformat.write_text("import sys\nsys.modules['nbformat'] = None\n")
    with process_cluster(tmp_path, n_workers=1, preload=NO_DC_JUPYTER) as cluster:
        shell = connected_shell(ipython_shell(), cluster.address)
        # The only worker has nbformat; mylib travels.
        cell = "%%distribute\nimport nbformat, mylib\nloud = mylib.shout('a')\nloud"
        assert ok(shell, cell) == "A!"
        cluster.add_worker("--preload", str(no_nbformat), name="late")
        cluster.wait_for_workers(2)
        with Client(cluster.address, timeout="30s", set_as_default=False) as client:
            late = next(
                a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "late"
            )
            # The notebook's module is there without any new work being sent...
            got = client.run(lambda: __import__("mylib").shout("b"), workers=[late])
            assert got == {late: "B!"}

            # ...and the next cell that needs nbformat is refused, naming the new worker.
            def refused():
                result, _, _ = run(shell, cell.replace("loud = ", "again = "))
                return result.error_in_exec

            error = wait_until(lambda: refused(), timeout=30)
        assert isinstance(error, ModuleNotFoundError) and error.name == "nbformat"
        assert f"on 1 of 2 workers ({late})" in str(error) and "Nothing was sent" in str(error)
        assert ok(shell, "%%distribute\nimport mylib\nmylib.shout('c')") == "C!"
    _forget_local_modules()


def test_lru_cache_helpers_arrive_by_value(shell):
    ok(
        shell,
        "import functools\n@functools.lru_cache\ndef slow_square(x):\n    return x * x\n"
        "@functools.cache\ndef cube(x):\n    return x ** 3\n"
        "@compute_this\ndef use(x):\n    return slow_square(x) + cube(x)",
    )
    assert ok(shell, "use(3).compute()") == 36 == ok(shell, "use.local(3)")
    assert ok(shell, "use.map([1, 2]).compute()") == [2, 12]
    assert ok(shell, "%%distribute\nv = slow_square(4) + cube(2)\nv") == 24
    assert ok(shell, "slow_square.cache_info().currsize") >= 1  # the notebook's cache is kept


DISPATCH = """
import functools
@functools.singledispatch
def describe(x):
    return "thing"
@describe.register
def _(x: int):
    return f"int {x}"
@describe.register(list)
def _each(x):
    return [describe(v) for v in x]     # calls the dispatcher again
"""


def test_cached_helpers_defined_in_a_cell_come_back(shell):
    cell = (
        "import functools\n@functools.lru_cache(maxsize=16)\ndef sq(x):\n    return x * x\n"
        "@functools.cache\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "v = sq(3) + fib(20)\n"
    )
    ok(shell, cell)
    local = shell.user_ns["v"]
    ok(shell, "del sq, fib, v")
    ok(shell, "%%distribute\n" + cell)
    assert shell.user_ns["v"] == local == 6774
    # Back in the notebook: cached wrappers again, working here and sent again.
    assert ok(shell, "sq.cache_parameters()['maxsize'], fib(10), hasattr(fib, 'cache_info')") == (
        16,
        55,
        True,
    )
    ok(shell, "@compute_this\ndef both(x):\n    return sq(x) + fib(x)")
    assert ok(shell, "both(10).compute()") == 155 == ok(shell, "both.local(10)")


def test_singledispatch_helpers_in_functions_and_cells(shell):
    ok(shell, DISPATCH + "@compute_this\ndef use(x):\n    return describe(x)")
    values = "[1, 'a', [2, [3, 'b']]]"
    local = ok(shell, f"[use.local(v) for v in {values}]")
    assert local == ["int 1", "thing", ["int 2", ["int 3", "thing"]]]
    assert ok(shell, f"use.map({values}).compute()") == local
    assert ok(shell, f"%%distribute\nw = [describe(v) for v in {values}]\nw") == local
    # Defined in a cell: it comes back as a dispatcher with its registry.
    ok(shell, "del describe")
    ok(shell, "%%distribute\n" + DISPATCH)
    assert ok(shell, "describe([1, 'x']), sorted(c.__name__ for c in describe.registry)") == (
        ["int 1", "thing"],
        ["int", "list", "object"],
    )
    assert ok(shell, "use(7).compute()") == "int 7"


def test_a_job_may_return_cached_and_singledispatch_functions(shell):
    """Functions wrapped in the work itself come back: plain cloudpickle cannot send
    a local lru_cache (it pickles by name) or a singledispatch (its cache)."""
    ok(
        shell,
        "@compute_this\ndef make(k):\n    import functools\n"
        "    @functools.lru_cache\n    def times(x):\n        return k * x\n"
        "    @functools.singledispatch\n    def kind(x):\n        return 'thing'\n"
        "    @kind.register\n    def _(x: int):\n        return 'int'\n"
        "    return times, kind",
    )
    ok(shell, "times, kind = make(3).compute()")
    assert ok(shell, "times(5), hasattr(times, 'cache_info'), kind(1), kind('a')") == (
        15,
        True,
        "int",
        "thing",
    )
    ok(shell, "pairs = make.map([2, 4]).compute()")
    assert ok(shell, "[t(10) for t, _ in pairs], [k(1.5) for _, k in pairs]") == (
        [20, 40],
        ["thing", "thing"],
    )


def test_a_cached_helper_in_work_sent_from_inside_a_job(shell):
    ok(
        shell,
        "import functools\n@functools.lru_cache\ndef sq(x):\n    return x * x\n"
        "@compute_this\ndef g(x):\n    return sq(x) + 1\n"
        "@compute_this\ndef spread(n):\n    return g.map(range(n)).compute()",
    )
    assert ok(shell, "spread(4).compute()") == [1, 2, 5, 10]


def test_lru_cache_and_cached_property_in_a_notebook_class(shell):
    ok(
        shell,
        "import functools\nclass Box:\n    @functools.cached_property\n    def size(self):\n"
        "        return 5\n    @functools.lru_cache\n    def scaled(self, x):\n"
        "        return x * self.size\n@compute_this\ndef measure(box):\n"
        "    return box.scaled(3), box.size",
    )
    assert ok(shell, "measure(Box()).compute()") == (15, 5) == ok(shell, "measure.local(Box())")


def test_lru_cache_with_a_size_keeps_it():
    from dc_jupyter.core import pickling

    @functools.lru_cache(maxsize=7, typed=True)
    def half(x):
        return x / 2

    rebuilt = pickling.cloudpickle.loads(pickling.dumps(half))
    assert rebuilt(4) == 2 and rebuilt.cache_parameters() == {"maxsize": 7, "typed": True}


def test_the_modules_a_pickle_refers_to_are_noted():
    from dc_jupyter.core import pickling

    names: set[str] = set()
    pickling.dumps((nbformat.from_dict({}), importlib, lambda: 1), names)
    assert {"nbformat", "importlib"} <= names and "__main__" not in names


# -- a real kernel -------------------------------------------------------------------


def test_in_a_real_kernel(far_cluster, tmp_path):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    write(nbdir / "mylib.py", MYLIB_V1)
    v2 = textwrap.dedent(MYLIB_V2)
    cells = [
        "%load_ext dc_jupyter\n%load_ext autoreload\n%autoreload 2",
        "import mylib\n@compute_this\ndef area(sq):\n    return sq.area()\n"
        "(area(mylib.Square(3)).compute(), area.local(mylib.Square(3)))",
        "%%distribute\nfrom mylib import shout\nloud = shout('hi')\nloud",
        "compute_this(mylib.shout).map(['a', 'b']).compute()",
        "import functools\n@functools.lru_cache\ndef slow_square(x):\n    return x * x\n"
        "@compute_this\ndef use(x):\n    return slow_square(x) + 1\nuse(3).compute()",
        "%%distribute\nw = slow_square(4)\nw",
        DISPATCH + "@compute_this\ndef use(x):\n    return describe(x)\n"
        "(use([1, 'a']).compute(), use.local([1, 'a']))",
        "%%distribute\nimport functools\n@functools.cache\ndef cube(x):\n    return x ** 3\n"
        "c = cube(2)",
        "(cube(3), use.map([2]).compute())",
        # an edit in the editor, between two cells
        f"import os, pathlib\np = pathlib.Path('mylib.py')\np.write_text({v2!r})\n"
        "t = p.stat().st_mtime_ns + 2_000_000_000\nos.utime(p, ns=(t, t))",
        "(compute_this(lambda: mylib.VERSION)().compute(), mylib.VERSION)",
        "%%distribute\nimport mylib\nmylib.shout('a')",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": far_cluster.address}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])
    )
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(nbdir)}},
    )
    client.execute(env=env)

    def result(index):
        outputs = nb.cells[index].outputs
        errors = [o for o in outputs if o["output_type"] == "error"]
        assert not errors, (index, errors)
        return next(o for o in outputs if o["output_type"] == "execute_result")["data"][
            "text/plain"
        ]

    assert result(1) == "(9, 9)"
    assert result(2) == "'HI!'"
    assert result(3) == "['A!', 'B!']"
    assert result(4) == "10"
    assert result(5) == "16"
    assert result(6) == "(['int 1', 'thing'], ['int 1', 'thing'])"
    assert result(8) == "(27, ['int 2'])"
    assert result(10) == "(2, 2)"
    assert result(11) == "'A!!'"
