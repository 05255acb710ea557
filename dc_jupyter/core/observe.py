"""The core's one hook towards the views: how a wait or a handle is shown.

The core calls ``watching(handle, label)`` around a blocking wait and
``show(handle, label)`` when a handle is displayed; both do nothing until a
view layer registers itself with ``set_views`` (``dc_jupyter/__init__.py``
wires in ``dc_jupyter.ui.display`` at import). So the core never imports the
views, and a script that only uses the core shows nothing and pays nothing.
Not for deciding what to show: that is the views' business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol


class Views(Protocol):
    """What a view layer offers the core (``dc_jupyter.ui.display`` implements it)."""

    def watching(self, handle: Any, label: str | None = None) -> contextlib.AbstractContextManager:
        """Show ``handle`` live while the block waits on it."""

    def show(self, handle: Any, label: str | None = None) -> None:
        """Display a handle that nobody waits on."""

    def lazy_job_html(self, name: str, arguments: str) -> str:
        """The HTML card of a job not sent yet."""


_views: Any = None


def set_views(views: Views | None) -> None:
    """Register the view layer (or None: show nothing)."""
    global _views
    _views = views


@contextlib.contextmanager
def watching(handle: Any, label: str | None = None) -> Iterator[None]:
    """Show ``handle`` while the block waits; a no-op without a view layer."""
    if _views is None:
        yield
        return
    with _views.watching(handle, label):
        yield


def show(handle: Any, label: str | None = None) -> None:
    """Display ``handle``; without a view layer, print its repr."""
    if _views is None:
        print(repr(handle))
        return
    _views.show(handle, label)


def lazy_job_html(name: str, arguments: str) -> str | None:
    """The card of a job not sent yet, or None (IPython then shows its repr)."""
    return None if _views is None else _views.lazy_job_html(name, arguments)
