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

logger = logging.getLogger(__name__)

#: Seconds between two refreshes of a view: about 10 updates a second.
INTERVAL = 0.1
#: Seconds between two scheduler queries for "running on which worker".
LOCATE_INTERVAL = 1.0


class View(Protocol):
    """Something the monitor refreshes until it says it has drawn its final state."""

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
    inner = getattr(handle, "_inner", None)
    client = getattr(inner, "client", None)
    key = getattr(inner, "key", None)
    if client is None or key is None or handle.done():
        return None
    return _locator.where(client, key)


def dashboard_link(handle: Any) -> str | None:
    """The Dask dashboard of the cluster ``handle`` runs on, if it has one."""
    client = getattr(getattr(handle, "_inner", None), "client", None) or getattr(
        handle, "client", None
    )
    try:
        return client.dashboard_link if client is not None else None
    except Exception:  # no dashboard (e.g. started without one)
        return None
