"""Workers that stopped answering while they hold our work: seen, said, and bounded.

A worker stopped by SIGSTOP, a debugger, swapping or a long GIL-holding C
call sends no heartbeats, and its task waits with it. Once a second per Dask
client, and only while something waits on or shows such work, one query to
the scheduler (``remote.health``, run there) lists the workers not heard from
for a few heartbeat intervals and the tasks they hold. Views say so
(``silent_workers``); ``dc_jupyter.frozen-worker-timeout`` bounds a wait
(``stop_if_frozen``). The query runs on the client's event loop and is never
waited for, so a frozen scheduler cannot hold up a wait, a timeout or Ctrl-C.
Not for deciding what Dask does with such a worker (``worker-ttl`` does that).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import Any

import cloudpickle

from dc_jupyter import config
from dc_jupyter.errors import FrozenWorkerError
from dc_jupyter.remote import health

cloudpickle.register_pickle_by_value(health)  # the scheduler lacks dc_jupyter
logger = logging.getLogger(__name__)

#: A worker counts as not answering after this many heartbeat intervals ...
INTERVALS = 5
#: ... and at least this many seconds (a loaded machine delays heartbeats a little).
MIN_SILENCE = 5.0
#: Seconds between two queries to one scheduler; also how often a wait looks.
POLL = 1.0


class _Poller:
    """The last answer of ``remote.health.silent_workers`` per client, refreshed
    in the background at most every ``POLL`` seconds while someone asks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # client -> [asked at, pending concurrent future, answer, answered at]
        self._state: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def answer(self, client: Any) -> tuple[float, dict[str, tuple[float, list[str]]]]:
        """``(heartbeat interval, {worker: (seconds silent now, keys)})``; never blocks."""
        now = time.monotonic()
        with self._lock:
            state = self._state.setdefault(client, [-1e9, None, None, now])
            pending = state[1]
            if pending is not None and pending.done():
                state[1] = None
                try:
                    state[2], state[3] = pending.result(), now
                except Exception:  # e.g. the scheduler refuses pickled functions
                    logger.debug("dc_jupyter: could not ask for silent workers", exc_info=True)
            if state[1] is None and now - state[0] >= POLL:
                state[0], state[1] = now, self._ask(client)
            answer, answered_at = state[2], state[3]
        if not answer:
            return 0.5, {}
        since = now - answered_at  # still silent since the scheduler answered
        return answer["interval"], {
            address: (seconds + since, keys)
            for address, (seconds, keys) in answer["silent"].items()
        }

    @staticmethod
    def _ask(client: Any) -> Any:
        if getattr(client, "status", None) != "running":
            return None
        try:
            coroutine = client.run_on_scheduler(health.silent_workers, asynchronous=True)
            return asyncio.run_coroutine_threadsafe(coroutine, client.loop.asyncio_loop)
        except Exception:
            logger.debug("dc_jupyter: could not ask for silent workers", exc_info=True)
            return None


_poller = _Poller()


def _owns(handle: Any) -> Any:
    """A test ``key -> bool``: is the task ``key`` part of ``handle``'s work?"""
    prefix = getattr(handle, "key_prefix", None)
    if isinstance(prefix, str):
        return lambda key: key.startswith(prefix)
    keys = {str(handle.key)} if getattr(handle, "key", None) else set()
    # Its dependencies too: a job waits while the job it needs runs.
    keys.update(str(k.key) for k in getattr(handle, "_keep", ()) if getattr(k, "key", None))
    return keys.__contains__


def silent_workers(handle: Any, at_least: float | None = None) -> dict[str, float]:
    """``{worker address: seconds}`` for the workers running ``handle``'s tasks that
    have not answered for ``at_least`` seconds (default: a few heartbeat intervals).

    Empty for work not on Dask, finished work, and until the first answer.
    """
    client = getattr(handle, "client", None)
    if client is None or handle.done():
        return {}
    interval, silent = _poller.answer(client)
    if not silent:
        return {}
    floor = max(MIN_SILENCE, INTERVALS * interval) if at_least is None else at_least
    owns = _owns(handle)
    return {
        address: seconds
        for address, (seconds, keys) in silent.items()
        if seconds >= floor and any(owns(key) for key in keys)
    }


def limit() -> float | None:
    """``dc_jupyter.frozen-worker-timeout`` in seconds, or None (no bound)."""
    return config.seconds(config.get("frozen-worker-timeout", None), "frozen-worker-timeout")


def stop_if_frozen(handle: Any, seconds: float | None) -> None:
    """Cancel ``handle`` and raise ``FrozenWorkerError`` if a worker running it has
    not answered for ``seconds``; nothing when ``seconds`` is None."""
    if seconds is None:
        return
    silent = silent_workers(handle, at_least=seconds)
    if not silent:
        return
    address, quiet = max(silent.items(), key=lambda item: item[1])
    handle.cancel()
    name = getattr(handle, "label", None) or handle.name
    raise FrozenWorkerError(
        f"{name}: worker {address} has not answered for {quiet:.0f} s (frozen or "
        f"overloaded?), longer than dc_jupyter.frozen-worker-timeout ({seconds:g} s); the "
        "work was cancelled. Look at that worker (a stopped or swapping process, a long "
        "C call holding the GIL), or raise the setting."
    )


def wait(finished: threading.Event, handles: list, timeout: float | None) -> bool:
    """``finished.wait(timeout)``: True once it is set, False at the timeout.

    With ``dc_jupyter.frozen-worker-timeout`` set, it also looks every ``POLL``
    seconds whether a worker running one of ``handles`` stopped answering for
    that long (``stop_if_frozen``: that one cancelled, ``FrozenWorkerError``).
    """
    bound = limit()
    if bound is None:
        return finished.wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if finished.wait(POLL if left is None else min(POLL, left)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        for handle in handles:
            if not handle.done():
                stop_if_frozen(handle, bound)


def note(silent: dict[str, float], names: dict[str, str] | None = None) -> str:
    """``worker w-0 has not answered for 12 s (frozen or overloaded?)``, or ``""``."""
    if not silent:
        return ""
    address, quiet = max(silent.items(), key=lambda item: item[1])
    name = (names or {}).get(address)
    who = f"{address} ({name})" if name and name != address else address
    more = f" (and {len(silent) - 1} more)" if len(silent) > 1 else ""
    return f"worker {who}{more} has not answered for {quiet:.0f} s (frozen or overloaded?)"
