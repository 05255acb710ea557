"""The live ipywidgets of a job (or cell) and of a map, for Jupyter kernels.

A view owns one widget panel and its handle. ``refresh()`` reads the handle's
cheap summary and sets only the values that changed; the monitor thread calls
it about ten times a second. The markup is ``render.py``'s, the same as the
static HTML, so the live and the saved form never disagree.

When the work ends the output is *replaced* (a display update) by the final
state as plain ``text/html`` and ``text/plain``: that renders without the
widget manager, so reopened notebooks, nbconvert and GitHub show the final
state. It is drawn before the cell's execution ends: a blocking wait draws it
in ``close()``, and a displayed handle at the end of whichever cell saw it
finish (``post_execute``). Until then the output carries a text form that
says the work was not finished, never a made-up state.

Only ``display.py`` and the handles' display hooks import this module, lazily:
the core of dc_jupyter never imports ipywidgets.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

import ipywidgets as w
from IPython.display import display

from dc_jupyter.core import frozen
from dc_jupyter.ui import render
from dc_jupyter.ui.monitor import client_of, dashboard_link, monitor, where_running, worker_names

logger = logging.getLogger(__name__)

_HIDDEN = "none"


class _Panel(w.Box):
    """A wrapping row whose output carries a text and HTML form beside the widget."""

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


def _register_end_of_cell_hook() -> None:
    """Once per shell: draw finished displayed handles at the end of every cell."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(shell, "_dc_jupyter_final_hook", False):
        return
    shell.events.register("post_execute", monitor.refresh_done)
    # The kernel stops (shutdown, restart) while work is displayed live: say so in
    # the saved output instead of leaving its last live state ("queued · 0.0 s").
    # Runs before ipykernel's own exit handlers, so iopub still delivers it.
    atexit.register(_mark_unfinished_at_exit)
    shell._dc_jupyter_final_hook = True


def _mark_unfinished_at_exit() -> None:
    for view in monitor.remaining():
        try:
            view.abandon()
        except Exception:  # exiting: never let a display problem stop that
            logger.debug("dc_jupyter: could not mark a view unfinished", exc_info=True)


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
        self._client = client_of(handle)
        self.cancel_button = w.Button(
            description="Cancel",
            icon="stop",
            tooltip=f"cancel the remote work of {self.label}",
            # The theme's own button colours (readable in light and dark themes);
            # never wider than its text, never pushed out of the output area.
            layout=w.Layout(
                width="auto", flex="0 0 auto", display=None if cancellable else _HIDDEN
            ),
        )
        self.cancel_button.on_click(self._cancel)
        self.state = self.read(fetch=False)
        self.html = w.HTML(layout=w.Layout(flex="1 1 0%", min_width="0", width="auto"))
        self.panel = _Panel(
            self.fallback,
            children=[self.html, self.cancel_button],
            layout=w.Layout(
                display="flex", flex_flow="row wrap", align_items="center", width="100%"
            ),
        )
        self.draw(self.state)

    # -- to override ---------------------------------------------------------
    def read(self, fetch: bool) -> Any:
        raise NotImplementedError

    def text(self, state: Any) -> str:
        raise NotImplementedError

    def markup(self, state: Any) -> str:
        raise NotImplementedError

    # -- drawing -------------------------------------------------------------
    def draw(self, state: Any) -> None:
        _set(self.html, "value", self.markup(state))

    def fallback(self) -> tuple[str, str]:
        """The text forms carried beside the live widget: final if it is, else a
        note that the work had not finished when the output was saved."""
        if self.state.finished:
            return self.text(self.state), self.markup(self.state)
        return render.unfinished_text(self.label), render.unfinished_html(self.label)

    def names(self) -> dict[str, str]:
        if self._client is None:
            self._client = client_of(self.handle)
        return worker_names(self._client)

    # -- life cycle ----------------------------------------------------------
    def show(self) -> LiveView:
        """Display the view and keep it moving until the handle is done.

        Work already done shows its final state right away, with no widget.
        """
        if self.refresh_state():
            self.finished = True
            self._display = display(self._static(), raw=True, display_id=True)
            self.handle = None
            return self
        _register_end_of_cell_hook()
        self._display = display(self.panel, display_id=True)
        if not self.refresh():
            monitor.add(self)
        return self

    def refresh_state(self) -> bool:
        self.state = self.read(self.fetch_results)
        return self.state.finished

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

    def redraw_final(self) -> None:
        """Send the final state's display update again (the monitor's, at a cell's end)."""
        with self._lock:
            if self.finished and self.state.finished and self._display is not None:
                self._display.update(self._static(), raw=True)

    def abandon(self) -> None:
        """The kernel is stopping before the work ended: show that, statically."""
        with self._lock:
            if self.finished:
                return
            self.finished = True
            _set(self.cancel_button.layout, "display", _HIDDEN)
            if self._display is not None:
                when = render.KERNEL_STOPPED
                self._display.update(
                    {
                        "text/plain": render.unfinished_text(self.label, when),
                        "text/html": render.unfinished_html(self.label, when),
                    },
                    raw=True,
                )
            self.handle = None

    def _static(self) -> dict:
        return {"text/plain": self.text(self.state), "text/html": self.markup(self.state)}

    def _finish(self) -> None:
        """Final state: no cancel button, and the output becomes static HTML + text.

        The widgets are drawn final too (a front end that misses the update
        still shows the right state) but are not closed: closing would blank
        the view wherever the update did not arrive.
        """
        _set(self.cancel_button.layout, "display", _HIDDEN)
        if self._display is not None:
            self._display.update(self._static(), raw=True)
        # The widgets outlive the view (ipywidgets keeps them): let go of the
        # handle, so the results it holds are not pinned on the workers.
        self.handle = None

    def _cancel(self, _button: w.Button) -> None:
        handle = self.handle
        if handle is None:  # already ended
            return
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        handle.cancel()


class JobView(LiveView):
    """Name, state (queued, running on which worker, finished, failed, cancelled),
    elapsed time, dashboard link, and at the end the result preview or error."""

    def __init__(self, handle: Any, label: str | None = None, cancellable: bool = False) -> None:
        self.dashboard = dashboard_link(handle)
        super().__init__(handle, label, cancellable)

    def read(self, fetch: bool) -> render.JobState:
        worker = where_running(self.handle)
        if worker is not None:
            worker = render.short_worker(worker, self.names())
        state = render.job_state(self.handle, worker=worker, dashboard=self.dashboard, fetch=fetch)
        state.name = self.label
        if not state.finished:
            state.note = frozen.note(frozen.silent_workers(self.handle), self.names())
        return state

    def text(self, state: render.JobState) -> str:
        return render.job_text(state)

    def markup(self, state: render.JobState) -> str:
        return render.job_html(state)


class MapView(LiveView):
    """Progress bar (done, failed, cancelled segments) with done/total, running and
    queued counts, rate, time left, and the items each worker has taken."""

    def read(self, fetch: bool) -> render.MapState:
        state = render.map_state(self.handle, self.names())
        state.name = self.label
        if not state.finished:
            state.note = frozen.note(frozen.silent_workers(self.handle), self.names())
        return state

    def text(self, state: render.MapState) -> str:
        return render.map_text(state)

    def markup(self, state: render.MapState) -> str:
        return render.map_html(state)


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
