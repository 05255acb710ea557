"""Setup calls that every worker must answer, waited for a bounded time.

Checking versions and installing dc_jupyter's worker code ask every worker
(Dask broadcasts them). A worker that is frozen (SIGSTOP, a C call holding the
GIL) accepts the message and never answers, so the first call on such a
cluster hung with no word. Here the call runs in a thread of its own; the
caller waits at most ``dc_jupyter.setup-timeout`` (30 s), then gets an error that names the
silent workers. The call goes on in the background, and the next attempt
waits for that same call instead of starting another.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from dc_jupyter import config
from dc_jupyter.errors import SchedulerUnreachableError

T = TypeVar("T")

#: client -> {what: the call in flight or done}
_calls: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()
#: A worker silent for longer than this is named as the likely cause.
SILENT_AFTER = 5.0


def answered(client: Any, what: str, call: Callable[[], T], key: Hashable = None) -> T:
    """``call()``, or ``SchedulerUnreachableError`` naming the silent workers when
    it takes longer than ``dc_jupyter.setup-timeout``. Ctrl-C stops the wait.

    ``what`` says what the call does; calls with the same ``key`` (default
    ``what``) are one call while it is in flight.
    """
    key = what if key is None else key
    with _lock:
        pending = _calls.setdefault(client, {})
        future = pending.get(key)
        if future is None or (future.done() and future.exception() is not None):
            future = pending[key] = _start(call, what)
    seconds = config.seconds(config.get("setup-timeout", "30s"), "setup-timeout") or 30.0
    try:
        return future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise SchedulerUnreachableError(
            f"The cluster at {client.scheduler.address} did not finish {what} within "
            f"{seconds:g} s: every worker must answer it, and {_silent(client)}. Nothing was "
            "sent. Restart or remove the worker (it may be frozen or overloaded), or set "
            "dc_jupyter.setup-timeout to wait longer; the call goes on in the background."
        ) from None
    finally:
        with _lock:  # a finished call is not kept: the next call asks afresh
            if future.done() and pending.get(key) is future:
                del pending[key]


def _start(call: Callable[[], Any], what: str) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:  # handed to whoever waits
            future.set_exception(exc)

    threading.Thread(target=run, name=f"dc_jupyter-{what}", daemon=True).start()
    return future


def _silent(client: Any) -> str:
    """Which workers have not been heard from lately, in words."""
    try:
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # older Dask lists every worker anyway
            workers = client.scheduler_info()["workers"]
    except Exception:
        return "some workers did not answer"
    now = time.time()
    silent = [
        f"{address} ({now - info['last_seen']:.0f} s)"
        for address, info in workers.items()
        if now - info.get("last_seen", now) > SILENT_AFTER
    ]
    if not silent:
        return "some workers did not answer"
    return "these workers have not answered for a while: " + ", ".join(silent)
