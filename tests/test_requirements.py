"""``python -m dc_jupyter requirements`` and ``%distribute requirements``: what workers need."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys

from conftest import ipython_shell
from IPython.utils.capture import capture_output
from packaging.requirements import Requirement


def pins(text: str) -> dict[str, str]:
    """The ``name==version`` lines of a requirements text, parsed as pip would."""
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            found[req.name] = spec.version
    return found


def test_module_entry_pins_the_notebooks_versions(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dc_jupyter", "requirements"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert pins(out) == {
        name: importlib.metadata.version(name) for name in ("cloudpickle", "dask", "distributed")
    }
    minor = ".".join(platform.python_version_tuple()[:2])
    assert f"Python {minor}.x" in out
    assert "dc_jupyter" not in pins(out)

    target = tmp_path / "worker-requirements.txt"
    said = subprocess.run(
        [sys.executable, "-m", "dc_jupyter", "requirements", "-o", str(target)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert target.read_text() == out
    assert f"pip install -r {target}" in said


def test_line_magic_prints_the_same():
    ip = ipython_shell()
    ip.run_line_magic("load_ext", "dc_jupyter")
    with capture_output() as shown:
        ip.run_line_magic("distribute", "requirements")
    expected = subprocess.run(
        [sys.executable, "-m", "dc_jupyter", "requirements"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.stdout == expected
