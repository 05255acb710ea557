"""A text progress bar for maps in terminal IPython and scripts (tqdm, on stderr).

Shown only when stderr is a terminal, so logs and pipes stay clean. Driven by
the same throttled monitor thread as the widgets; not for Jupyter kernels.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from dc_jupyter.core import frozen
from dc_jupyter.ui import render
from dc_jupyter.ui.monitor import monitor


class _Bar(tqdm):
    # tqdm's own monitor thread outlives the bar; ours already refreshes on time.
    monitor_interval = 0
    counts = ""  # render.map_counts of the last refresh, shown after the bar

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "counts": self.counts}


class TextBar:
    """``square:  45%|████▌     | 88/200 done · running 2 · queued 110 · failed 2 · …``.

    tqdm draws the bar; the numbers beside it come from ``render.map_counts``,
    the same formatter as the widgets and the HTML.
    """

    def __init__(self, handle: Any, label: str | None = None, file: Any = None) -> None:
        self.handle = handle
        self.bar = _Bar(
            total=handle.total,
            desc=label or handle.name,
            unit="item",
            file=file or sys.stderr,
            mininterval=0.1,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
        )
        self.label = label

    def refresh(self) -> bool:
        state = render.map_state(self.handle)
        if not state.finished:
            state.note = frozen.note(frozen.silent_workers(self.handle))
        counts = render.map_counts(state)
        if counts != self.bar.postfix:
            self.bar.postfix = counts  # a plain string: tqdm shows it as it is
        if state.ended > self.bar.n:
            self.bar.update(state.ended - self.bar.n)
        else:
            self.bar.refresh()
        return state.finished

    def show(self) -> TextBar:
        monitor.add(self)
        return self

    def close(self) -> None:
        """Final refresh, then leave the finished bar on its line."""
        monitor.discard(self)
        try:
            self.refresh()
        finally:
            self.bar.close()


def stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
