"""Before work is sent to a Dask cluster: its local modules go along, missing packages are named.

``ensure(client, names, what)`` takes the top-level modules the work refers to
(``core.pickling`` notes them while pickling; a cell adds its imports):

- the user's own modules (``localcode``) are installed on the workers by value,
  once per cluster and version: a worker plugin (``remote.modules``), so
  workers that join later get them too; a changed file is sent again;
- any other module is looked up on every worker once per cluster; if a worker
  lacks one, ``ModuleNotFoundError`` names it, the workers and how to install
  it, and nothing is sent.

Per call, when nothing is new, this costs a set difference (plus a ``stat``
per local module the work uses). Workers that join later get the local modules
from the plugin; a scheduler plugin (``remote.plugins.ReportWorkerJoins``)
tells the notebook about them, and the modules checked so far are checked
again on them before the next work is sent.
"""

from __future__ import annotations

import importlib.metadata
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dc_jupyter import config
from dc_jupyter.backends.dask import bounded, connection, localcode
from dc_jupyter.remote import modules as remote_modules
from dc_jupyter.remote import plugins

#: Scheduler events: a worker joined (``remote.plugins.ReportWorkerJoins``).
JOINS_TOPIC = "dc_jupyter-worker-joins"


@dataclass
class _ClusterState:
    """What one cluster (client + scheduler id) has been given and checked."""

    scheduler_id: Any
    ok: set[str] = field(default_factory=set)  # installed there: nothing to do per call
    shipped: dict[str, _Version] = field(default_factory=dict)  # unit name -> what it got
    lock: threading.Lock = field(default_factory=threading.Lock)
    checked: set[str] = field(default_factory=set)  # of ``ok``: those asked of the workers
    joined: set[str] = field(default_factory=set)  # workers that joined since (not asked yet)
    watching: bool = False  # subscribed to the scheduler's joins


_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_units: dict[str, localcode.LocalUnit] = {}


def _state(client: Any) -> _ClusterState:
    identity = connection.identity(client)
    state = _states.get(client)
    if state is None or state.scheduler_id != identity.get("id"):
        # A restarted scheduler at the same address has lost its plugins.
        state = _states[client] = _ClusterState(identity.get("id"))
    return state


def ensure(client: Any, names: Iterable[str], what: str) -> None:
    """Ship the local modules among ``names`` and check the rest are on the workers.

    ``what`` names the work in messages (``f()``, ``the cell``).
    """
    state = _state(client)
    if state.joined:  # rare: a worker joined since the last check
        with state.lock:
            _check_joined(client, state)
    todo = set(names) - state.ok
    if not todo:
        return
    with state.lock:
        _settle(client, state, todo, what)


def _settle(client: Any, state: _ClusterState, todo: set[str], what: str) -> None:
    ship = bool(config.get("ship-local-modules", True))
    extra = frozenset(config.get("ship-modules", None) or ())
    to_check: list[str] = []
    to_ship: list[_Version] = []
    seen: set[str] = set()
    # The work's modules, then the local ones those import. Other imports of a
    # local module are not checked: it may guard them (try: import fast_thing).
    work = set(todo)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        unit = _unit(name, extra) if ship or name in extra else None
        if unit is not None:
            version = _version(state, unit)
            to_ship.append(version)
            todo.update(version.imports - state.ok)
        elif localcode.is_stdlib(name) or name in localcode.ALWAYS_THERE:
            state.ok.add(name)
        elif name in work:
            to_check.append(name)
    if to_check and config.get("check-modules", True):
        _watch_joins(client, state)  # first: a worker joining during the check is heard of
        _check_workers(client, sorted(to_check), what)  # raises before anything is sent
        state.checked.update(to_check)
    state.ok.update(to_check)
    for version in to_ship:
        _ship(client, state, version)


def _unit(name: str, extra: frozenset[str]) -> localcode.LocalUnit | None:
    unit = _units.get(name)
    if unit is None:
        # Not cached when not local: a mylib.py created later must be found.
        unit = localcode.find_unit(name, extra)
        if unit is not None:
            _units[name] = unit
    return unit


@dataclass
class _Version:
    """One local unit as it is now: sources read only when its files changed."""

    name: str
    stamp: tuple
    digest: str
    imports: frozenset[str]
    modules: dict | None = None  # None: unchanged since shipped


def _version(state: _ClusterState, unit: localcode.LocalUnit) -> _Version:
    stamp = unit.stamp()
    shipped = state.shipped.get(unit.name)
    if shipped is not None and shipped.stamp == stamp:
        return shipped  # the usual case: unchanged since it was sent
    # New or changed: look again (a package may have new files), read, compare.
    fresh = localcode.find_unit(unit.name, frozenset({unit.name})) or unit
    _units[unit.name] = fresh
    modules, digest = fresh.sources()
    return _Version(unit.name, fresh.stamp(), digest, localcode.imports_of(modules), modules)


def _ship(client: Any, state: _ClusterState, version: _Version) -> None:
    shipped = state.shipped.get(version.name)
    if version.modules is not None and (shipped is None or shipped.digest != version.digest):
        plugin = remote_modules.ShipModules(version.name, version.modules, version.digest)
        bounded.answered(
            client, f"sending {version.name}", lambda: client.register_plugin(plugin),
            key=("ship", version.name, version.digest),
        )  # fmt: skip
    version.modules = None  # sent: keep only what identifies it
    state.shipped[version.name] = version


def _watch_joins(client: Any, state: _ClusterState) -> None:
    """Hear of workers that join from now on (once per cluster)."""
    if state.watching:
        return
    joined = state.joined

    def on_join(event: Any) -> None:  # the client's event loop: only note it
        _timestamp, message = event
        if isinstance(message, dict) and message.get("worker"):
            joined.add(str(message["worker"]))

    bounded.answered(
        client, "watching for new workers",
        lambda: client.register_plugin(plugins.ReportWorkerJoins(JOINS_TOPIC)),
    )  # fmt: skip
    client.subscribe_topic(JOINS_TOPIC, on_join)
    state.watching = True


def _check_joined(client: Any, state: _ClusterState) -> None:
    """Ask workers that joined whether they have the modules checked so far; a
    module one lacks is no longer taken as there, so work needing it is refused."""
    joined = set()
    while state.joined:  # the client's event loop adds to it meanwhile: pop, never iterate
        try:
            joined.add(state.joined.pop())
        except KeyError:
            break
    names = sorted(state.checked)
    if not joined or not names:
        return
    present = set(connection.scheduler_info(client).get("workers", {}))
    workers = sorted(joined & present)  # one that left again cannot answer
    if not workers:
        return
    lacking = bounded.answered(
        client, "the module check of new workers",
        lambda: client.run(remote_modules.missing, names, workers=workers, on_error="ignore"),
        key=("check joined", tuple(names), tuple(workers)),
    )  # fmt: skip
    for missing in lacking.values():
        state.ok.difference_update(missing)
        state.checked.difference_update(missing)


def _check_workers(client: Any, names: list[str], what: str) -> None:
    lacking = bounded.answered(  # {worker address: [names]}
        client, "the module check", lambda: client.run(remote_modules.missing, names),
        key=("check", tuple(names)),
    )  # fmt: skip
    by_module: dict[str, list[str]] = {}
    for worker, missing in sorted(lacking.items()):
        for name in missing:
            by_module.setdefault(name, []).append(worker)
    if not by_module:
        return
    name = sorted(by_module)[0]
    workers = by_module[name]
    others = sorted(set(by_module) - {name})
    also = f" (also missing there: {', '.join(others)})" if others else ""
    raise ModuleNotFoundError(
        f"No module named {name!r} on {len(workers)} of {len(lacking)} workers "
        f"({', '.join(workers)}){also}: {what} needs it there. Nothing was sent. "
        f"Install it in the workers' environment: `pip install {_pip_name(name)}` there, or "
        "`python -m dc_jupyter requirements -o worker-requirements.txt` here and "
        "`pip install -r worker-requirements.txt` on each worker node. If it is your own "
        f"code, put it next to the notebook or add it to dask config dc_jupyter.ship-modules.",
        name=name,
    )


def _pip_name(module: str) -> str:
    """The distribution that provides ``module`` here (``sklearn`` -> ``scikit-learn``)."""
    try:
        dists = importlib.metadata.packages_distributions().get(module)
    except Exception:  # a broken installation must not hide the real error
        dists = None
    return dists[0] if dists else module
