"""A text progress bar for maps in terminal IPython and scripts (tqdm, on stderr).

Shown only when stderr is a terminal, so logs and pipes stay clean. Driven by
the same throttled monitor thread as the widgets; not for Jupyter kernels.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from dc_jupyter.ui.monitor import monitor


class _Bar(tqdm):
    # tqdm's own monitor thread outlives the bar; ours already refreshes on time.
    monitor_interval = 0


class TextBar:
    """``square: 45%|████▌     | 90/200 [00:02<00:02, 41.2 item/s, failed=1]``."""

    def __init__(self, handle: Any, label: str | None = None, file: Any = None) -> None:
        self.handle = handle
        self.bar = _Bar(
            total=handle.total,
            desc=label or handle.name,
            unit="item",
            file=file or sys.stderr,
            mininterval=0.1,
            dynamic_ncols=True,
        )
        self._failed = 0

    def refresh(self) -> bool:
        p = self.handle.progress()
        ended = p.done + p.failed + p.cancelled
        if p.failed != self._failed:
            self._failed = p.failed
            self.bar.set_postfix(failed=p.failed, refresh=False)
        if ended > self.bar.n:
            self.bar.update(ended - self.bar.n)
        return ended >= p.total

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
