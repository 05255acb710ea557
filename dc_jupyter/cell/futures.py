"""The handles of a ``%%distribute`` cell and sweep (what ``-o NAME`` keeps).

A cell's task returns its whole outcome (the names it bound, the value of its
last expression) as one pickle. ``CellFuture`` decodes it once, so
``handle.result()`` and the widget's preview show the cell's value, as
``Out[n]`` would, not the bytes it travelled in; ``SweepFuture`` does the
same for ``--map`` (a list, in input order). For an ``--async`` cell,
``result()`` also waits until the names are in the notebook, so the next line
can use them. Not for running cells
(``cell.run``) or for the worker side (``remote.cell``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from dc_jupyter.core import pickling
from dc_jupyter.core.futures import JobFuture
from dc_jupyter.errors import SerializationError

if TYPE_CHECKING:
    from dc_jupyter.core.map import MapFuture

__all__ = ["CellFuture", "SweepFuture"]


class CellFuture(JobFuture):
    """A ``JobFuture`` whose ``result()`` is the value of the cell's last expression.

    ``None`` when the cell ends with a statement. ``outcome()`` has everything
    the cell sends back: ``values`` (the names it bound), ``deleted``,
    ``result`` and ``skipped`` (names that could not be pickled).
    """

    label: str = "cell"
    has_result: bool = True  # False when the cell ends with a statement: no preview

    @classmethod
    def adopt(
        cls, handle: JobFuture, label: str, run_async: bool = False, has_result: bool = True
    ) -> CellFuture:
        """Wrap the backend's handle of a cell's job (same task, same cancelling).

        With ``run_async``, ``result()`` waits for ``namespace_updated()`` too.
        """
        cell = cls(
            handle._inner,
            handle.name,
            key=handle.key,
            keep=handle._keep,
            canceller=handle._canceller,
            translate=handle._translate,
            arrival=handle._arrival,
        )
        cell.submitted_at = handle.submitted_at
        cell.label = label
        cell.has_result = has_result
        cell._outcome: dict | None = None
        cell._decode_lock = threading.Lock()
        cell._namespace = threading.Event()
        if not run_async:  # the waiting cell itself updates the namespace
            cell._namespace.set()
        return cell

    def _value_ready(self) -> bool:
        # What a view previews is the cell's value, once decoded and in the notebook.
        return self._outcome is not None and self._namespace.is_set()

    def _shown_value(self, value: Any) -> Any:
        return self._outcome["result"] if self._outcome is not None else None

    def namespace_updated(self) -> None:
        """Called once an ``--async`` cell's names are in the notebook (or it failed)."""
        self._namespace.set()

    def outcome(self, timeout: float | None = None) -> dict:
        """Wait like ``result`` and return the cell's decoded outcome."""
        __tracebackhide__ = True
        blob = super().result(timeout)  # the run_cell blob, itself a pickle
        with self._decode_lock:
            if self._outcome is None:
                try:
                    self._outcome = pickling.loads_result(blob)
                except Exception:
                    self._outcome = self._outcome_by_name()
                    if self._outcome is None:
                        raise
            return self._outcome

    def _outcome_by_name(self) -> dict | None:
        """The outcome decoded name by name, when it cannot be as a whole here.

        A worker re-pickles each name separately (``remote.job.split_outcome``);
        names whose value cannot be unpickled in the notebook (e.g. a class
        only the workers have) go to ``skipped``, with their type, and the
        rest come back. None when that is not possible (not on Dask).
        """
        client = getattr(self._inner, "client", None)
        if client is None:
            return None
        # The outcome may have come ahead of Dask's word that the task is done.
        with contextlib.suppress(Exception):
            self._inner.exception(timeout=60)
        if getattr(self._inner, "status", None) != "finished":
            return None
        from dc_jupyter.backends.dask import install
        from dc_jupyter.backends.dask.backend import task_resources

        split = client.submit(
            install.installed_on(client).split_outcome,
            self._inner,
            key=f"{self.key}-split",
            pure=False,
            resources=task_resources(client, {}),
        )
        try:
            parts = pickling.loads_result(split.result(timeout=60))
        finally:
            split.release()
        skipped = dict(parts.get("skipped", {}))
        values = {}
        for name, (blob, kind) in parts["values"].items():
            try:
                values[name] = pickling.loads_result(blob)
            except Exception as exc:
                skipped[name] = (
                    f"a {kind} cannot be unpickled in the notebook ({type(exc).__name__}: {exc})"
                )
        blob, kind = parts["result"]
        try:
            result = pickling.loads_result(blob)
        except Exception as exc:
            raise SerializationError(
                f"{self.label}: the cell's last expression is a {kind}, which cannot be "
                f"unpickled in the notebook ({type(exc).__name__}: {exc}). End the cell with "
                "a value the notebook can load (its class may exist only on the workers)."
            ) from None
        return {**parts, "values": values, "result": result, "skipped": skipped}

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the cell and return the value of its last expression (or None)."""
        __tracebackhide__ = True
        deadline = None if timeout is None else time.monotonic() + timeout
        value = self.outcome(timeout)["result"]
        # The done-callback that fills the namespace runs just after the task ends.
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._namespace.wait(left):
            raise TimeoutError(f"{self.label}: the namespace was not updated within {timeout:g} s")
        return value

    def __repr__(self) -> str:
        return f"<CellFuture {self.label} status={self.status}>"


class SweepFuture:
    """The handle of a ``%%distribute --map`` sweep: a ``MapFuture`` (progress,
    cancel, status, ... are its own) whose ``result()`` is the list of the cell's
    last-expression values, in input order."""

    def __init__(self, inner: MapFuture, label: str, run_async: bool = False) -> None:
        self._map = inner
        self.label = label
        self._parts: list[dict] | None = None
        self._decode_lock = threading.Lock()
        self._namespace = threading.Event()
        if not run_async:
            self._namespace.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._map, name)

    def parts(self, timeout: float | None = None) -> list[dict]:
        """Wait for every element and return each one's decoded outcome, in input order.

        Raises the exception of the first failing element, like ``MapFuture.result``.
        """
        __tracebackhide__ = True
        blobs = self._map.result(timeout)
        with self._decode_lock:
            if self._parts is None:
                self._parts = [pickling.loads_result(blob) for blob in blobs]
            return self._parts

    def result(self, timeout: float | None = None) -> list[Any]:
        """Wait for the sweep; the cell's last-expression value for each element."""
        __tracebackhide__ = True
        deadline = None if timeout is None else time.monotonic() + timeout
        values = [part["result"] for part in self.parts(timeout)]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._namespace.wait(left):
            raise TimeoutError(f"{self.label}: the namespace was not updated within {timeout:g} s")
        return values

    def namespace_updated(self) -> None:
        """Called once an ``--async`` sweep's names are in the notebook (or it failed)."""
        self._namespace.set()

    def __repr__(self) -> str:
        return f"<SweepFuture {self.label} {self._map.counts()}>"

    def _ipython_display_(self) -> None:
        from dc_jupyter.core import observe

        observe.show(self)
