"""Cell analysis: pure, no IPython and no cluster; same answers on Python 3.10-3.13."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dc_jupyter.cell.analysis import analyze_cell

MODULE = Path(__file__).resolve().parent.parent / "dc_jupyter" / "cell" / "analysis.py"

# (cell, inputs, outputs) - inputs in the order first read
CASES = [
    ("x = x + 1", ["x"], ["x"]),
    ("y = 1\nz = y + w", ["w"], ["y", "z"]),
    (
        "import numpy as np\nimport os.path\nfrom a import b as c\nv = np.zeros(n)",
        ["n"],
        ["np", "os", "c", "v"],
    ),
    (
        "def f(a):\n    return a * scale + helper(a)\ndef helper(b):\n    return b\nf(2)",
        ["scale"],
        ["f", "helper"],
    ),
    ("def inc():\n    global counter\n    counter += 1\ninc()", ["counter"], ["counter", "inc"]),
    ("lam = lambda q: q + z\n[w * k for w in ws if w > lim]", ["ws", "k", "lim", "z"], ["lam"]),
    ("if c:\n    t = 1\nprint(t)", ["c", "t"], ["t"]),
    ("if c:\n    t = 1\nelse:\n    t = 2\nprint(t)", ["c"], ["t"]),
    ("for i in range(3):\n    acc = acc + i", ["acc"], ["i", "acc"]),
    (
        "try:\n    r = 1 / d\nexcept ZeroDivisionError as e:\n    r = 0\nfinally:\n    done = True",
        ["d"],
        ["r", "e", "done"],
    ),
    (
        "class A(Base):\n    k = kk\n    m = k + 1\n    def meth(self):\n        return outer\na = A()",
        ["Base", "kk", "outer"],
        ["A", "a"],
    ),
    ("a, *rest = seq\n(total := sum(rest))\ndel a", ["seq"], ["a", "rest", "total"]),
    (
        "with open(p) as fh:\n    data = fh.read()\nf'{data!r:>{width}}'",
        ["p", "width"],
        ["fh", "data"],
    ),
    ("if (m := len(items)) > 3:\n    big = True", ["items"], ["m", "big"]),
    (
        "match cmd:\n    case [x, *ys]:\n        out = x\n    case {'k': v, **kw}:\n        out = v\n    case Point(x=px) as pt:\n        out = pt",
        ["cmd", "Point"],
        ["x", "ys", "out", "v", "kw", "px", "pt"],
    ),
    ("def gen():\n    yield from range(m)\nlist(gen())", ["m"], ["gen"]),
    ("@deco(arg)\ndef g(x: T = dflt) -> R:\n    pass", ["deco", "arg", "dflt", "T", "R"], ["g"]),
    (
        "def outer():\n    v = 1\n    def inner():\n        nonlocal v\n        return v + glob\n    return inner\nouter()()",
        ["glob"],
        ["outer"],
    ),
    ("[total := total + j for j in range(3)]", ["total"], ["total"]),
    ("x: int = 5\ny: Z", ["Z"], ["x"]),
    ("get_ipython().run_line_magic('time', 'timed = f(n)')", ["get_ipython", "f", "n"], ["timed"]),
    (
        "def later_use():\n    return defined_below\ndefined_below = 1",
        [],
        ["later_use", "defined_below"],
    ),
]


@pytest.mark.parametrize("cell,inputs,outputs", CASES)
def test_inputs_and_outputs(cell, inputs, outputs):
    analysis = analyze_cell(cell)
    assert list(analysis.inputs) == inputs
    assert list(analysis.outputs) == outputs


def test_builtins_are_not_inputs_but_are_reported():
    analysis = analyze_cell("nums = list(range(n))\nprint(max(nums))")
    assert analysis.inputs == ("n",)
    assert set(analysis.builtins_read) == {"list", "range", "print", "max"}


def test_last_expression_and_semicolon():
    assert analyze_cell("x = 1\nx").has_result
    assert not analyze_cell("x = 1\nx;").has_result
    assert not analyze_cell("x = 1\nx;  # quiet").has_result
    assert not analyze_cell("x = 1").has_result
    assert not analyze_cell("").has_result
    assert analyze_cell("print('a;')").has_result


def test_del_and_star_import():
    analysis = analyze_cell("tmp = 1\ndel tmp, other")
    assert analysis.deleted == ("tmp", "other")
    assert analysis.inputs == ("other",)
    assert analyze_cell("from math import *\nsqrt(2)").star_import


@pytest.mark.parametrize(
    "cell", ["x = (1,", "def f(:\n  pass", "return 5", "nonlocal q", "x = 1\n  y = 2"]
)
def test_syntax_errors_are_raised(cell):
    with pytest.raises(SyntaxError):
        analyze_cell(cell)


def _interpreters() -> list[str]:
    """One working interpreter per Python version 3.10-3.13 found on this machine."""
    found = []
    for version in ("3.10", "3.11", "3.12", "3.13"):
        candidates = sorted(
            str(p) for p in Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python")
        )
        candidates += [p for p in [shutil.which(f"python{version}")] if p]
        for python in candidates:
            ok = subprocess.run([python, "-c", "pass"], capture_output=True, timeout=30)
            if ok.returncode == 0:
                found.append(python)
                break
    return found


def test_same_answers_on_python_310_to_313():
    """Run the (stdlib-only) module under every interpreter installed here."""
    interpreters = _interpreters()
    if len(interpreters) < 2:
        pytest.skip("needs at least two of Python 3.10-3.13 installed")
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('ca', {str(MODULE)!r})\n"
        "ca = importlib.util.module_from_spec(spec); sys.modules['ca'] = ca\n"
        "spec.loader.exec_module(ca)\n"
        "cells = json.load(sys.stdin)\n"
        "out = [[list(a.inputs), list(a.outputs), list(a.deleted), a.has_result] "
        "for a in map(ca.analyze_cell, cells)]\n"
        "print(sys.version_info[:2], json.dumps(out))"
    )
    cells = json.dumps([c[0] for c in CASES])
    answers = {}
    for python in interpreters:
        proc = subprocess.run(
            [python, "-c", script], input=cells, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        version, _, payload = proc.stdout.partition(" [")
        answers[version] = json.loads("[" + payload)
    assert len(set(map(json.dumps, answers.values()))) == 1, answers
    expected = [[list(i), list(o)] for _, i, o in CASES]
    assert [a[:2] for a in next(iter(answers.values()))] == expected
