"""Refuse to send work to a cluster whose versions differ from the notebook's.

Pickled functions only load where Python's minor version and cloudpickle
match, and dask/distributed must agree on their protocol; finding that out on
connect beats a cryptic unpickling error on a worker.

Workers that join later are kept out by a gate (``remote.plugins.VersionGate``):
every dc_jupyter task needs a worker resource that only workers with the
notebook's versions get, as they join. The notebook hears of the others
through a Dask event and warns once per worker (``warn_mismatched_workers``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import threading
import warnings
import weakref
from typing import Any

from dc_jupyter import config
from dc_jupyter.backends.dask import bounded
from dc_jupyter.errors import MismatchedWorkerWarning, VersionMismatchError
from dc_jupyter.remote import plugins

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
    asked = bounded.answered(client, "the version check", lambda: client.get_versions(check=False))
    problems = find_mismatches(asked)
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


# -- workers that join later ----------------------------------------------------------

#: The Dask event topic on which the gate names workers it kept out.
GATE_TOPIC = "dc_jupyter-version-gate"


@functools.lru_cache(maxsize=1)
def expected_versions() -> dict[str, str]:
    """This process's versions of the checked packages, as Dask reports them."""
    from distributed.versions import get_versions

    packages = get_versions()["packages"]
    return {package: str(packages.get(package)) for package in CHECKED}


@functools.lru_cache(maxsize=1)
def _gate_resource() -> str:
    # Named after the versions: notebooks with other versions sharing a cluster
    # each have their own gate, and keep their own matching workers.
    digest = hashlib.sha1(repr(sorted(expected_versions().items())).encode()).hexdigest()
    return f"dc_jupyter-env-{digest[:10]}"


def gate_resource() -> str | None:
    """The worker resource dc_jupyter tasks need, or None with ``check-versions: false``."""
    return _gate_resource() if config.get("check-versions", True) else None


def gate_plugins() -> list[Any]:
    """The plugins that give the gate's resource to matching workers (worker side first)."""
    resource, expected = _gate_resource(), expected_versions()
    return [
        plugins.VersionGateOnWorker(resource, expected),
        plugins.VersionGate(resource, expected, GATE_TOPIC),
    ]


_lock = threading.Lock()
#: client -> gate events not warned about yet; client -> addresses warned about
_pending: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_warned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def watch_gate(client: Any) -> None:
    """Collect the gate's events for ``client``: those to come, and those logged before."""
    resource = _gate_resource()

    def collect(event: Any) -> None:  # on the client's event loop: only note it
        message = event[1] if isinstance(event, tuple) else event
        if isinstance(message, dict) and message.get("resource") == resource:
            with _lock:
                _pending.setdefault(client, []).append(message)

    with _lock:
        _pending.setdefault(client, [])
        _warned.setdefault(client, set())
    client.subscribe_topic(GATE_TOPIC, collect)
    try:
        for event in client.get_events(GATE_TOPIC):
            collect(event)
    except Exception:  # an older or busy scheduler: the events to come still arrive
        pass


def warn_mismatched_workers(client: Any) -> None:
    """Warn once per worker the gate kept out (cheap when there is none: a list check)."""
    if not _pending.get(client) or not config.get("check-versions", True):
        return
    with _lock:
        messages, _pending[client] = _pending[client], []
        warned = _warned.setdefault(client, set())
        fresh = [m for m in messages if m.get("worker") not in warned]
        warned.update(m.get("worker") for m in fresh)
    for message in fresh:
        warnings.warn(mismatch_text(client, message), MismatchedWorkerWarning, stacklevel=3)


def mismatch_text(client: Any, message: dict) -> str:
    """What the user is told about a worker that joined with other versions."""
    worker, name = message.get("worker"), message.get("name")
    named = f"{worker} ({name})" if name and name != worker else str(worker)
    differences = "; ".join(
        f"{package} {theirs} there, {mine} here" for package, mine, theirs in message["problems"]
    )
    return (
        f"Worker {named} joined the cluster at {client.scheduler.address} with other "
        f"versions than this notebook ({differences}). dc_jupyter sends it no work; the "
        "other workers carry on (work waits if no matching worker is left). Install the "
        "notebook's versions there (`python -m dc_jupyter requirements` writes them) and "
        "restart that worker."
    )
