"""The live ipywidgets of a job (or cell) and of a map, for Jupyter kernels.

A view owns one widget panel and its handle. ``refresh()`` reads the handle's
cheap summary and sets only the values that changed; the monitor thread calls
it about ten times a second and ``close()`` calls it once more, synchronously,
so the saved notebook keeps the final state. Every output also carries the
``text/plain`` and ``text/html`` form of that state (``render.py``).

Only ``display.py`` and the handles' display hooks import this module, lazily:
the core of dc_jupyter never imports ipywidgets.
"""

from __future__ import annotations

import threading
from typing import Any

import ipywidgets as w
from IPython.display import display

from dc_jupyter.ui import render
from dc_jupyter.ui.monitor import dashboard_link, monitor, where_running

_HIDDEN = "none"


class _Panel(w.VBox):
    """A VBox whose output carries a text and HTML fallback of its view's state."""

    def __init__(self, fallback: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fallback = fallback

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        data = super()._repr_mimebundle_(**kwargs) or {}
        text, markup = self._fallback()
        data["text/plain"] = text
        data["text/html"] = markup
        return data


def _set(widget: w.Widget, name: str, value: Any) -> None:
    """Set a trait only when it changes: an unchanged value sends no message."""
    if getattr(widget, name) != value:
        setattr(widget, name, value)


class LiveView:
    """Base of the job and map views: display, refresh, finish, close."""

    def __init__(self, handle: Any, label: str | None = None, cancellable: bool = False) -> None:
        self.handle = handle
        self.label = label or render.display_name(handle)
        self.finished = False
        # A blocking wait fetches the result itself; a displayed handle has no waiter.
        self.fetch_results = cancellable
        self._lock = threading.Lock()  # the monitor thread and close() both refresh
        self._display: Any = None
        self.cancel_button = w.Button(
            description="Cancel",
            button_style="warning",
            icon="stop",
            tooltip=f"cancel the remote work of {self.label}",
            layout=w.Layout(
                width="auto", flex="0 0 auto", display=None if cancellable else _HIDDEN
            ),
        )
        self.cancel_button.on_click(self._cancel)
        self.state = self.read(fetch=False)
        self.panel = _Panel(self.fallback, children=self.build())
        self.draw(self.state)

    # -- to override ---------------------------------------------------------
    def read(self, fetch: bool) -> Any:
        raise NotImplementedError

    def build(self) -> list[w.Widget]:
        raise NotImplementedError

    def draw(self, state: Any) -> None:
        raise NotImplementedError

    def fallback(self) -> tuple[str, str]:
        raise NotImplementedError

    # -- life cycle ----------------------------------------------------------
    def show(self) -> LiveView:
        """Display the panel and keep it moving until the handle is done."""
        self._display = display(self.panel, display_id=True)
        if not self.refresh():
            monitor.add(self)
        return self

    def refresh(self, fetch: bool | None = None) -> bool:
        """Redraw from the handle; on the first finished state, make it final."""
        with self._lock:
            if self.finished:
                return True
            self.state = self.read(self.fetch_results if fetch is None else fetch)
            self.draw(self.state)
            if self.state.finished:
                self.finished = True
                self._finish()
            return self.finished

    def close(self) -> None:
        """End of a blocking wait: the final refresh now, in the caller's thread.

        If the handle is somehow not done yet (an interrupted wait whose cancel
        is still travelling), the monitor keeps it until it is.
        """
        monitor.discard(self)
        # The wait has fetched the result (or failed to): fetching again costs nothing.
        self.fetch_results = True
        if not self.refresh():
            monitor.add(self)

    def _finish(self) -> None:
        """Compact final state: no cancel button; re-send the output's fallback."""
        _set(self.cancel_button.layout, "display", _HIDDEN)
        if self._display is not None:
            self._display.update(self.panel)

    def _cancel(self, _button: w.Button) -> None:
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        self.handle.cancel()


class JobView(LiveView):
    """Name, state (queued, running on which worker, finished, failed, cancelled),
    elapsed time, dashboard link, and at the end the result preview or error."""

    def __init__(self, handle: Any, label: str | None = None, cancellable: bool = False) -> None:
        self.dashboard = dashboard_link(handle)
        super().__init__(handle, label, cancellable)

    def read(self, fetch: bool) -> render.JobState:
        state = render.job_state(
            self.handle, worker=where_running(self.handle), dashboard=self.dashboard, fetch=fetch
        )
        state.name = self.label
        return state

    def build(self) -> list[w.Widget]:
        self.line = w.HTML()
        return [w.HBox([self.line, self.cancel_button])]

    def draw(self, state: render.JobState) -> None:
        _set(self.line, "value", render.job_html(state))

    def fallback(self) -> tuple[str, str]:
        return render.job_text(self.state), render.job_html(self.state)


_BAR_STYLE = {"finished": "success", "failed": "danger", "cancelled": "warning"}


class MapView(LiveView):
    """Progress bar with done/total, running and failed counts, rate, time left,
    and the items each worker has taken."""

    def read(self, fetch: bool) -> render.MapState:
        state = render.map_state(self.handle)
        state.name = self.label
        return state

    def build(self) -> list[w.Widget]:
        total = max(self.state.total, 1)
        self.title = w.HTML(layout=w.Layout(flex="0 0 auto", margin="0 8px 0 0"))
        self.bar = w.IntProgress(
            min=0, max=total, value=0, layout=w.Layout(flex="1 1 auto", max_width="360px")
        )
        self.counts = w.HTML(layout=w.Layout(flex="0 0 auto", margin="0 8px"))
        self.workers = w.HTML(layout=w.Layout(display=_HIDDEN))
        return [
            w.HBox([self.title, self.bar, self.counts, self.cancel_button]),
            self.workers,
        ]

    def draw(self, state: render.MapState) -> None:
        colour = render.COLOURS.get(state.state, "#6c757d")
        _set(
            self.title,
            "value",
            f"<b>{state.name}</b> <span style='color:{colour};font-weight:bold'>"
            f"{state.state}</span>",
        )
        _set(self.bar, "value", state.ended if state.total else 1)
        _set(self.bar, "bar_style", _BAR_STYLE.get(state.state, ""))
        _set(self.counts, "value", render.map_counts(state))
        workers = render.per_worker_text(state.per_worker)
        _set(self.workers, "value", f"<span style='color:#6c757d'>per worker: {workers}</span>")
        _set(self.workers.layout, "display", None if workers else _HIDDEN)

    def fallback(self) -> tuple[str, str]:
        return render.map_text(self.state), render.map_html(self.state)


def is_map(handle: Any) -> bool:
    return callable(getattr(handle, "progress", None))


def view_for(handle: Any, label: str | None = None, cancellable: bool = False) -> LiveView:
    """A ``MapView`` for map handles, a ``JobView`` for the rest."""
    cls = MapView if is_map(handle) else JobView
    return cls(handle, label=label, cancellable=cancellable)


def watch(handle: Any, label: str | None = None) -> LiveView:
    """Show ``handle`` during a blocking wait; call ``close()`` when the wait ends."""
    return view_for(handle, label).show()


def show(handle: Any, label: str | None = None) -> LiveView:
    """Show a non-blocking handle (e.g. ``fut = f(1).submit(); fut``) with a cancel button."""
    return view_for(handle, label, cancellable=True).show()
