"""The handle of a ``%%distribute`` cell (what ``-o NAME`` keeps).

A cell's task returns its whole outcome (the names it bound, the value of its
last expression) as one pickle. ``CellFuture`` decodes it once, so
``handle.result()`` and the widget's preview show the cell's value, as
``Out[n]`` would, not the bytes it travelled in. Not for running cells
(``cell.py``) or for the worker side (``_cell_worker.py``).
"""

from __future__ import annotations

import threading
from typing import Any

from . import serialize
from .handle import JobFuture

__all__ = ["CellFuture"]


class CellFuture(JobFuture):
    """A ``JobFuture`` whose ``result()`` is the value of the cell's last expression.

    ``None`` when the cell ends with a statement. ``outcome()`` has everything
    the cell sends back: ``values`` (the names it bound), ``deleted``,
    ``result`` and ``skipped`` (names that could not be pickled).
    """

    label: str = "cell"

    @classmethod
    def adopt(cls, handle: JobFuture, label: str) -> CellFuture:
        """Wrap the backend's handle of a cell's job (same task, same cancelling)."""
        cell = cls(
            handle._inner,
            handle.name,
            key=handle.key,
            keep=handle._keep,
            on_cancel=handle._on_cancel,
            canceller=handle._canceller,
        )
        cell.submitted_at = handle.submitted_at
        cell.label = label
        cell._outcome: dict | None = None
        cell._decode_lock = threading.Lock()
        return cell

    def outcome(self, timeout: float | None = None) -> dict:
        """Wait like ``result`` and return the cell's decoded outcome."""
        __tracebackhide__ = True
        blob = super().result(timeout)  # the run_cell blob, itself a pickle
        with self._decode_lock:
            if self._outcome is None:
                self._outcome = serialize.loads_result(blob)
            return self._outcome

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the cell and return the value of its last expression (or None)."""
        __tracebackhide__ = True
        return self.outcome(timeout)["result"]

    def __repr__(self) -> str:
        return f"<CellFuture {self.label} status={self.status}>"
