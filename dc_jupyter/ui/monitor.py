"""The background thread that keeps live displays moving, throttled by time.

One named daemon thread (``dc_jupyter-monitor``) refreshes every watched view
about ten times a second, however many tasks the views stand for: a view reads
its handle's cheap summary (``status``, ``progress()``) and sends only what
changed. The thread ends by itself when nothing is watched, so no thread is
left behind. Also here: ``where_running``, which asks a Dask scheduler which
worker runs a key, at most once a second per client for all watched jobs.

Not for rendering (``render.py``, ``widgets.py``) or for deciding what to show.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from dc_jupyter.core import output

logger = logging.getLogger(__name__)

#: Seconds between two refreshes of a view: about 10 updates a second.
INTERVAL = 0.1
#: Seconds between two scheduler queries for "running on which worker".
LOCATE_INTERVAL = 1.0


class View(Protocol):
    """Something the monitor refreshes until it says it has drawn its final state.

    A view may also have ``redraw_final()``: when this thread drew the final
    state, it is called again at the end of the next cell
    (``output.resend_at_next_cell``), so nbclient and nbconvert get it too.
    """

    def refresh(self) -> bool:
        """Redraw from the handle; return True when the final state is drawn."""


class Monitor:
    """Refreshes registered views from one daemon thread that exits when idle."""

    def __init__(self, interval: float = INTERVAL, name: str = "dc_jupyter-monitor") -> None:
        self.interval = interval
        self.name = name
        self._views: list[View] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, view: View) -> None:
        """Start refreshing ``view`` (and the thread, if it is not running)."""
        with self._lock:
            if view not in self._views:
                self._views.append(view)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def discard(self, view: View) -> None:
        """Stop refreshing ``view``; the thread ends once no view is left."""
        with self._lock:
            if view in self._views:
                self._views.remove(view)

    def refresh_done(self) -> None:
        """Draw, in the calling thread, the final state of every view whose work is done.

        Called at the end of each cell (IPython's ``post_execute``): a display
        update sent from the cell's own thread belongs to that cell, so the
        front end and nbclient apply it before the cell ends, and a saved
        notebook never holds an older state than the last one drawn.
        """
        with self._lock:
            views = list(self._views)
        for view in views:
            handle = getattr(view, "handle", None)
            try:
                if handle is not None and handle.done() and view.refresh():
                    self.discard(view)
            except Exception:
                logger.exception("dc_jupyter: drawing a final state failed")

    def remaining(self) -> list[View]:
        """The views still waiting for their work (a copy)."""
        with self._lock:
            return list(self._views)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while True:
            with self._lock:
                views = list(self._views)
                if not views:
                    # Decided under the lock, so add() either sees us running or starts anew.
                    self._thread = None
                    return
            for view in views:
                try:
                    finished = view.refresh()
                except Exception:  # a display problem must never stop the others
                    logger.exception("dc_jupyter: refreshing a live display failed")
                    finished = True
                if finished:
                    self.discard(view)
                    redraw = getattr(view, "redraw_final", None)
                    if redraw is not None:
                        output.resend_at_next_cell(redraw)
            # Fixed-rate ticks: a slow refresh does not add up to fewer than ~10/s.
            next_tick = max(next_tick + self.interval, time.monotonic())
            time.sleep(max(0.0, next_tick - time.monotonic()))


#: The one monitor of this process.
monitor = Monitor()


class _Locator:
    """Which worker runs a Dask key, from one ``client.processing()`` call a second.

    Cost: one scheduler round trip per second per client while some watched job
    is unfinished, never one per task or per refresh.
    """

    def __init__(self, interval: float = LOCATE_INTERVAL) -> None:
        self.interval = interval
        self._cache: dict[int, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def where(self, client: Any, key: str) -> str | None:
        with self._lock:
            asked_at, by_key = self._cache.get(id(client), (-1e9, {}))
            if time.monotonic() - asked_at >= self.interval:
                try:
                    processing = client.processing()  # {worker address: [keys]}
                except Exception:  # scheduler busy or gone: show no worker
                    processing = {}
                by_key = {str(k): w for w, keys in processing.items() for k in keys}
                self._cache[id(client)] = (time.monotonic(), by_key)
            return by_key.get(str(key))


_locator = _Locator()


def where_running(handle: Any) -> str | None:
    """The address of the worker running ``handle`` (a Dask-backed ``JobFuture``), if known."""
    client = getattr(handle, "client", None)
    key = getattr(handle, "key", None)
    if client is None or key is None or handle.done():
        return None
    return _locator.where(client, key)


#: Seconds a client's worker names are reused before asking again.
NAMES_INTERVAL = 5.0


class _Names:
    """Worker address -> Dask worker ``name``, from the client's scheduler info,
    asked at most every ``NAMES_INTERVAL`` seconds per client."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def of(self, client: Any) -> dict[str, str]:
        if client is None:
            return {}
        with self._lock:
            asked_at, names = self._cache.get(id(client), (-1e9, {}))
            if time.monotonic() - asked_at < NAMES_INTERVAL:
                return names
        try:
            try:
                info = client.scheduler_info(n_workers=-1)  # newer clients list 5 by default
            except TypeError:
                info = client.scheduler_info()
            names = {
                address: str(worker.get("name"))
                for address, worker in info.get("workers", {}).items()
                if worker.get("name") is not None
            }
        except Exception:  # scheduler gone or busy: addresses then
            names = {}
        with self._lock:
            self._cache[id(client)] = (time.monotonic(), names)
        return names


_names = _Names()


def client_of(handle: Any) -> Any:
    """The Dask client a handle's work runs on (a job's or a map's), if any."""
    return getattr(handle, "client", None)


def worker_names(client: Any) -> dict[str, str]:
    """``{address: name}`` for the workers of ``client`` (cached; ``{}`` without one)."""
    return _names.of(client)


def dashboard_link(handle: Any) -> str | None:
    """The Dask dashboard of the cluster ``handle`` runs on, if it has one."""
    client = getattr(handle, "client", None)
    try:
        return client.dashboard_link if client is not None else None
    except Exception:  # no dashboard (e.g. started without one)
        return None
