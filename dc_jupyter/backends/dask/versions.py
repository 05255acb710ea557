"""Refuse to send work to a cluster whose versions differ from the notebook's.

Pickled functions only load where Python's minor version and cloudpickle
match, and dask/distributed must agree on their protocol; finding that out on
connect beats a cryptic unpickling error on a worker.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from dc_jupyter.errors import VersionMismatchError

#: package -> how much of the version must match ("minor" = first two parts).
CHECKED = {"python": "minor", "cloudpickle": "full", "dask": "full", "distributed": "full"}


def _comparable(version: str | None, how: str) -> str | None:
    if version is None:
        return None
    return ".".join(str(version).split(".")[:2]) if how == "minor" else str(version)


def find_mismatches(versions: dict[str, Any]) -> list[str]:
    """Describe each checked package whose version differs from the client's.

    ``versions`` is what ``Client.get_versions(check=False)`` returns.
    """
    mine = versions["client"]["packages"]
    others = {"scheduler": versions.get("scheduler") or {}}
    others.update({f"worker {addr}": v for addr, v in (versions.get("workers") or {}).items()})
    problems = []
    for package, how in CHECKED.items():
        expected = _comparable(mine.get(package), how)
        for where, info in others.items():
            if not isinstance(info, dict) or "packages" not in info:
                continue
            theirs = info["packages"].get(package)
            if theirs is None and package == "cloudpickle" and where == "scheduler":
                continue  # the scheduler never unpickles user code
            if _comparable(theirs, how) != expected:
                problems.append(
                    f"{package}: notebook has {mine.get(package)}, {where} has {theirs}"
                )
    return problems


def check_versions(client: Any) -> None:
    """Raise ``VersionMismatchError`` naming each package and both versions."""
    problems = find_mismatches(client.get_versions(check=False))
    if problems:
        raise VersionMismatchError(
            "The cluster at "
            f"{client.scheduler.address} runs different versions than this notebook, so "
            "pickled work could fail there; nothing was sent.\n  "
            + "\n  ".join(problems)
            + "\nInstall matching versions on the notebook and the cluster (or set "
            "dask.config 'dc_jupyter.check-versions: false' to skip this check)."
        )


def worker_requirements() -> str:
    """A pip requirements file for worker nodes that matches this notebook.

    Pins exactly the packages the version check compares (``CHECKED``), with the
    Python minor version as a comment (pip cannot pin the interpreter). Workers
    need these plus whatever the user's code imports, never dc_jupyter itself.
    """
    python = ".".join(platform.python_version_tuple()[:2])
    lines = [
        "# Worker requirements matching this notebook (python -m dc_jupyter requirements).",
        f"# Python {python}.x on every worker and the scheduler (pip cannot pin it).",
        "# Add the packages your own code imports; dc_jupyter itself is not needed.",
    ]
    for package in CHECKED:
        if package != "python":
            lines.append(f"{package}=={importlib.metadata.version(package)}")
    return "\n".join(lines) + "\n"
