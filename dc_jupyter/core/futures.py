"""Handles for submitted work, in the ``concurrent.futures`` vocabulary.

A ``JobFuture`` wraps a backend's own future (a ``distributed.Future`` or a
``concurrent.futures.Future``) whose result is a pickled blob, and gives the
familiar ``result(timeout)``, ``exception()``, ``done()``, ``cancel()``,
``add_done_callback()`` plus a ``status`` string.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dc_jupyter.core import observe, pickling
from dc_jupyter.core.tracebacks import _PLUMBING, rebuild
from dc_jupyter.remote import job as remote_job

logger = logging.getLogger(__name__)

_NOT_YET = object()


def _strip_plumbing(exc: BaseException) -> BaseException:
    tb = exc.__traceback__
    while tb is not None and any(p in tb.tb_frame.f_code.co_filename for p in _PLUMBING):
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb
    return rebuild(exc)


def when_done(future: Any, callback: Callable[[Any], Any]) -> None:
    """Call ``callback(future)`` once ``future`` is done; ``callback`` must not wait.

    A Dask future's callback runs on its client's event loop, not through
    Dask's callback thread pool (``Future.add_done_callback``): Python shuts
    that pool at exit, and a result pushed ahead of Dask's news that its task
    finished (``backends.dask.pushed``) lets a script end before the news
    comes; each callback still pending then logged a RuntimeError traceback
    ("cannot schedule new futures after interpreter shutdown").
    """
    loop = getattr(getattr(future, "client", None), "loop", None)
    if loop is not None:
        try:
            from distributed.client import done_callback
        except ImportError:  # a Dask without it: its thread pool, as before
            pass
        else:
            loop.add_callback(done_callback, future, callback)
            return
    future.add_done_callback(callback)


class Arrival:
    """A result blob that may arrive ahead of the backend's future (a Dask job's
    small result comes with the news of its end: ``backends.dask.pushed``)."""

    def __init__(self) -> None:
        self.blob: Any = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], Any]] = []

    def set(self, blob: Any) -> None:
        """The result is here (the first one counts; a rerun may send it again)."""
        with self._lock:
            if self.blob is not None or blob is None:
                return
            self.blob = blob
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def when_set(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` when the result arrives (at once if it has); it may
        run on the backend's event loop, so it must not wait."""
        with self._lock:
            if self.blob is None:
                self._callbacks.append(callback)
                return
        callback()


@dataclass(frozen=True)
class JobSnapshot:
    """A handle's state at one moment, read without blocking (see ``JobFuture.snapshot``)."""

    status: str  # pending, running, finished, error, cancelled
    submitted_at: float
    has_value: bool = False  # the result is here (``value``), not only finished remotely
    value: Any = None
    error: BaseException | None = None  # the failure, once fetched


class JobFuture:
    """A submitted job: wait for it, cancel it, or ask how it is doing.

    Parameters
    ----------
    inner
        The backend's future; its result is a blob from ``remote.job.run_job``.
    name
        What runs, for messages and widgets (e.g. ``"square"``).
    keep
        Objects to keep alive as long as this handle (e.g. dependency futures).
    canceller
        Cancels a batch of handles of one backend in one go and stops their
        running code (``backends.dask.backend.DaskCanceller``); None: the
        inner future's own ``cancel()``.
    translate
        The backend's reading of its own failures (e.g. Dask's ``KilledWorker``
        as a ``WorkerCrashError``): an exception to raise instead, or None.
    arrival
        Where the result blob lands if it comes ahead of ``inner`` (``Arrival``);
        then the handle is done and answers without asking the backend.
    """

    def __init__(
        self,
        inner: Any,
        name: str,
        key: str | None = None,
        keep: tuple = (),
        canceller: Callable[[list[JobFuture]], None] | None = None,
        translate: Callable[[BaseException, JobFuture], BaseException | None] | None = None,
        arrival: Arrival | None = None,
    ) -> None:
        self._inner = inner
        self._arrival = arrival
        self.name = name
        self.key = key
        self._keep = keep
        self._canceller = canceller
        self._translate = translate
        self._fetcher: threading.Thread | None = None
        self._value: Any = _NOT_YET
        self._error: BaseException | None = None  # the failure, once seen
        self._error_tb: Any = None  # its traceback as it arrived
        self._lock = threading.Lock()
        self.submitted_at = time.monotonic()

    # -- state -------------------------------------------------------------
    @property
    def status(self) -> str:
        """One of ``pending``, ``running``, ``finished``, ``error``, ``cancelled``."""
        if self._error is not None:
            return "error"
        if self._arrived() is not None:
            return "finished"
        inner = self._inner
        status = getattr(inner, "status", None)
        if isinstance(status, str):
            return {"lost": "error"}.get(status, status)
        if inner.cancelled():
            return "cancelled"
        if inner.done():
            return "error" if inner.exception() is not None else "finished"
        return "running" if inner.running() else "pending"

    @property
    def client(self) -> Any:
        """The Dask client the job runs on; None for in-process and executor backends."""
        return getattr(self._inner, "client", None)

    def done(self) -> bool:
        """True when the job finished, failed or was cancelled."""
        return self._arrived() is not None or self._inner.done()

    def _arrived(self) -> Any:
        arrival = self._arrival
        return None if arrival is None else arrival.blob

    def notify_done(self, event: threading.Event) -> None:
        """Set ``event`` as soon as the job is done: when its result arrives ahead of
        the backend's future, or when that future is done. For waits; ``event.set``
        may run on the backend's event loop."""
        if self._arrival is not None:
            self._arrival.when_set(event.set)
        when_done(self._inner, lambda _: event.set())

    def cancelled(self) -> bool:
        return self.status == "cancelled"

    # -- waiting ---------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its value, or raise its exception.

        Raises ``TimeoutError`` if it is not done within ``timeout`` seconds (the
        job keeps running, as with ``concurrent.futures``). A ``KeyboardInterrupt``
        while waiting cancels the job and is raised again.
        """
        __tracebackhide__ = True  # IPython: show the remote frames, not this plumbing
        self._settle(timeout)
        output = getattr(self, "output", None)
        if output is not None:  # its prints come before its value
            output.finish()
            output.wait_written()
        if self._error is not None:
            # Always with the traceback it came with: each raise adds the frames
            # it passes through, and an earlier raise (a widget's) must not show.
            raise self._error.with_traceback(self._error_tb)
        return self._value

    def _settle(self, timeout: float | None) -> None:
        """Wait until the value or the error is here; raises only while waiting."""
        __tracebackhide__ = True
        if self._value is not _NOT_YET or self._error is not None:
            return
        try:
            blob = self._arrived()
            if blob is None:
                blob = self._inner.result(timeout=timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise
        except TimeoutError:
            raise
        except Exception as exc:
            with self._lock:
                if self._error is None:
                    clearer = self._translate(exc, self) if self._translate is not None else None
                    if clearer is not None:
                        clearer.__cause__ = exc
                    else:
                        # SystemExit & co. travel inside a carrier (remote.job.sendable)
                        clearer = _strip_plumbing(remote_job.user_exception(exc))
                    self._error_tb = clearer.__traceback__
                    self._error = clearer
            # Dask keeps the exception it raised in the client, and raising it
            # links our frames (so this future) to it: a cycle through the client
            # that would keep the erred task on the scheduler for good. Release
            # the future; the error is kept here for later calls.
            _release(self._inner)
            return
        with self._lock:
            if self._value is _NOT_YET:
                self._value = pickling.loads_result(blob)

    def blob(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result as it travelled (pickled bytes).

        For a backend that feeds this result to a job of its own without
        unpickling it here. Raises what ``result`` raises.
        """
        __tracebackhide__ = True
        if self._error is None:
            arrived = self._arrived()
            if arrived is not None:
                return arrived
            try:
                return self._inner.result(timeout=timeout)
            except TimeoutError:
                raise
            except Exception:
                pass  # raised below the way result() raises it: translated, and kept
        JobFuture.result(self, timeout)
        raise RuntimeError(f"{self.name} failed")  # pragma: no cover - result() raised

    def snapshot(self) -> JobSnapshot:
        """What is known now, without waiting or asking the cluster for a result.

        ``has_value``/``value`` and ``error`` are filled once a waiting caller
        (or ``prefetch``) has fetched them; for views, which must never block.
        """
        status = self.status
        value = self._value
        return JobSnapshot(
            status=status,
            submitted_at=self.submitted_at,
            has_value=value is not _NOT_YET and self._value_ready(),
            value=None if value is _NOT_YET else self._shown_value(value),
            error=self._error,
        )

    def _value_ready(self) -> bool:
        return True

    def _shown_value(self, value: Any) -> Any:
        return value

    def prefetch(self) -> None:
        """Fetch the result (or error) in a background thread, once; returns at once.

        For a displayed handle nobody waits on: ``snapshot()`` has it when it arrives.
        """
        with self._lock:
            if self._fetcher is not None:
                return
            self._fetcher = threading.Thread(
                target=self._fetch_quietly, name="dc_jupyter-fetch", daemon=True
            )
        self._fetcher.start()

    def _fetch_quietly(self) -> None:
        try:
            self.result()
        except BaseException:  # kept in self._error (or the inner future) for result()
            pass

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like ``result`` and return the job's exception, or None on success."""
        try:
            self._settle(timeout)
        except TimeoutError:
            if not self.done():
                raise
            return self._error or self._inner.exception()
        except Exception as exc:
            return exc
        return self._error

    def release_remote(self) -> None:
        """Let the cluster forget the result (and dependencies) once it is here.

        ``result()`` keeps answering from the copy in this process. Does
        nothing before the result arrived.
        """
        if self._value is _NOT_YET:
            return
        _release(self._inner)
        for dep in self._keep:
            _release(getattr(dep, "_inner", dep))

    def cancel(self) -> bool:
        """Cancel the job and its dependencies: queued work is dropped and running
        Python code is stopped on the worker (see ``remote.job.running_task``).

        True if it was not done yet.
        """
        return cancel_many([self])

    def add_done_callback(self, fn: Callable[[JobFuture], Any]) -> None:
        """Call ``fn(self)`` when the job is done; errors in ``fn`` are logged, not raised."""

        def call(_inner: Any) -> None:
            try:
                fn(self)
            except Exception:
                logger.exception("dc_jupyter: a done-callback raised")

        self._inner.add_done_callback(call)

    def __repr__(self) -> str:
        return f"<JobFuture {self.name} status={self.status}>"

    def _ipython_display_(self) -> None:
        """Displayed in a notebook: the live widget, with a cancel button."""
        observe.show(self)


def _release(inner: Any) -> None:
    release = getattr(inner, "release", None)  # distributed.Future only
    if release is not None:
        release()


def _with_dependencies(handles: list[JobFuture]) -> list[JobFuture]:
    seen: dict[int, JobFuture] = {}
    todo = list(handles)
    while todo:
        handle = todo.pop()
        if id(handle) in seen:
            continue
        seen[id(handle)] = handle
        todo.extend(k for k in handle._keep if isinstance(k, JobFuture))
    return list(seen.values())


def settle_many(handles: list[JobFuture]) -> None:
    """Fetch the results of finished handles together: one ``gather`` per Dask client
    instead of a round trip each. Others (and any fetch that fails) are left for
    ``result()``, which fetches them one by one."""
    groups: dict[int, tuple[Any, dict[int, JobFuture]]] = {}
    for handle in handles:
        inner = handle._inner
        client = getattr(inner, "client", None)  # distributed.Future only
        if handle._value is not _NOT_YET or handle._error is not None or client is None:
            continue
        if handle._arrived() is not None:  # here already: result() reads it
            continue
        if getattr(inner, "status", None) == "finished":
            groups.setdefault(id(client), (client, {}))[1][id(handle)] = handle
    for client, group in groups.values():
        chosen = list(group.values())
        try:
            blobs = client.gather([h._inner for h in chosen])
        except Exception:  # e.g. a result lost with its worker
            continue
        for handle, blob in zip(chosen, blobs, strict=True):
            with handle._lock:
                if handle._value is _NOT_YET:
                    handle._value = pickling.loads_result(blob)


def forget(handles: list[JobFuture]) -> None:
    """Release the cluster's copies of these handles' tasks and their dependencies'
    (for handles nobody else holds; their results stay as far as fetched)."""
    for handle in _with_dependencies(handles):
        _release(handle._inner)
        for kept in handle._keep:
            _release(getattr(kept, "_inner", kept))


def cancel_many(handles: list[JobFuture]) -> bool:
    """Cancel many handles (and their dependencies) with one request per backend.

    Returns True if any of ``handles`` was not done yet. Errors while telling
    the cluster (e.g. it is gone) are logged: cancelling must never hang or
    hide the reason the caller is cancelling.
    """
    # A finished handle (and what it waited for) is left alone: Dask would mark
    # even a finished future "cancelled", and the handle would then say so.
    handles = [h for h in handles if not h.done()]
    not_done = bool(handles)
    groups: dict[Any, list[JobFuture]] = {}
    for handle in _with_dependencies(handles):
        if handle.done():
            continue
        groups.setdefault(handle._canceller, []).append(handle)
    for canceller, group in groups.items():
        if canceller is None:
            for handle in group:
                handle._inner.cancel()
            continue
        try:
            canceller(group)
        except Exception:
            logger.warning("dc_jupyter: could not cancel on the cluster", exc_info=True)
    return not_done


def format_exception_summary(exc: BaseException) -> str:
    """The one-line summary of an exception, as the last line of a traceback shows it."""
    summary = traceback.TracebackException(type(exc), exc, None, compact=True)
    summary.__notes__ = None  # notes (e.g. "raised by item 3 of f.map") come after that line
    return "".join(summary.format_exception_only()).strip().splitlines()[-1]
