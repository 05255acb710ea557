"""The view layer's entry points: showing a wait, a handle, a job not sent yet.

``Job.compute()``, ``MapJob.compute()`` and ``%%distribute`` wrap their wait in
``watching(handle)``; displayed handles call ``show(handle)``. The core reaches
these through ``dc_jupyter.core.observe`` (this module is registered there at
import of ``dc_jupyter``), so the core never imports the views. In a Jupyter
kernel the live widgets of ``widgets.py`` appear; in terminal IPython and
scripts nothing is shown, except a text progress bar (``textbar.py``) for maps
when stderr is a TTY. Kept free of a top-level ipywidgets import so the core
never imports it; a display problem is logged and never breaks the work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


def in_kernel() -> bool:
    """True inside a Jupyter kernel that can show ipywidgets."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return (
        shell is not None
        and getattr(shell, "kernel", None) is not None
        and importlib.util.find_spec("ipywidgets") is not None
    )


def _is_map(handle: Any) -> bool:
    return callable(getattr(handle, "progress", None))


def _start(handle: Any, label: str | None) -> Any:
    try:
        if in_kernel():
            from dc_jupyter.ui import widgets

            return widgets.watch(handle, label)
        if _is_map(handle):
            from dc_jupyter.ui.textbar import TextBar, stderr_is_tty

            if stderr_is_tty():
                return TextBar(handle, label).show()
    except Exception:
        logger.exception("dc_jupyter: could not show progress of %s", label or handle.name)
    return None


@contextlib.contextmanager
def watching(handle: Any, label: str | None = None) -> Iterator[None]:
    """Show ``handle`` (a ``JobFuture`` or ``MapFuture``) live while the block waits.

    The display is refreshed to its final state when the block exits, also on
    error or ``KeyboardInterrupt``.
    """
    view = _start(handle, label)
    try:
        yield
    finally:
        if view is not None:
            try:
                view.close()
            except Exception:
                logger.exception("dc_jupyter: could not finish the display of %s", handle.name)


def show(handle: Any, label: str | None = None) -> None:
    """Display a handle: the live widget with a cancel button in a kernel, else its text."""
    from IPython.display import display

    if in_kernel():
        from dc_jupyter.ui import widgets

        widgets.show(handle, label)
        return
    from dc_jupyter.ui import render

    if not _is_map(handle) and handle.done():
        # Outside a kernel there is no live view to fill in the preview later, and
        # this is the caller's own thread: fetch the result (or error) now.
        with contextlib.suppress(BaseException):
            handle.result()
    if _is_map(handle):
        state = render.map_state(handle)
        state.name = label or state.name
        text, markup = render.map_text(state), render.map_html(state)
    else:
        state = render.job_state(handle)
        state.name = label or state.name
        text, markup = render.job_text(state), render.job_html(state)
    display({"text/plain": text, "text/html": markup}, raw=True)


def lazy_job_html(name: str, arguments: str) -> str:
    """The card of a ``Job`` not sent yet."""
    from dc_jupyter.ui.render import lazy_job_html as card

    return card(name, arguments)
