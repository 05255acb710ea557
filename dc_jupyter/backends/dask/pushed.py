"""Small results that come back with the news that their task finished.

Dask tells the client a task is done (``key-in-memory``), and only then does
``future.result()`` ask for the value: a round trip to the scheduler, which
asks the worker (or, with ``direct_to_workers``, one to the scheduler for
where it is and one to the worker). A job's task instead logs its result, if
it is at most ``dc_jupyter.push-results-below`` bytes, as a Dask event on a
topic only this client subscribes to (``remote.job.push_result``). The event
travels worker -> scheduler -> client on the same ordered streams as the
"finished" message, ahead of it: the handle has its value when it hears of
the end. Public Dask API only (``Worker.log_event``,
``Client.subscribe_topic``), so it works on any cluster; the scheduler drops
the events once passed on (``remote.plugins.ForgetOutputEvents``).

Nothing depends on an event arriving: without it (a larger result, a
scheduler that restarted and lost the subscription) the handle fetches the
result the usual way.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from dc_jupyter import config
from dc_jupyter.backends.dask import connection
from dc_jupyter.core.futures import Arrival

#: Every client's topic starts with this; one scheduler plugin forgets them all.
TOPIC_PREFIX = "dc_jupyter-result-"

_lock = threading.Lock()
#: client -> (scheduler id subscribed on, {task key: Arrival})
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def limit() -> int:
    """``dc_jupyter.push-results-below`` in bytes (0: every result is fetched)."""
    return config.in_bytes(config.get("push-results-below", "64 kB"))


def expect(client: Any, key: str) -> tuple[Arrival | None, tuple]:
    """Before sending the task ``key``: where its result will land, and the
    ``push=`` argument for ``run_job`` (empty: fetch it the usual way)."""
    max_bytes = limit()
    if max_bytes <= 0:
        return None, ()
    topic = TOPIC_PREFIX + client.id
    scheduler_id = connection.identity(client).get("id")
    with _lock:
        state = _clients.get(client)
        if state is None or state[0] != scheduler_id:
            # A new scheduler (restarted at the same address) has no subscription.
            waiting: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
            state = _clients[client] = (scheduler_id, waiting)
            client.subscribe_topic(topic, _receiver(waiting))
        arrival = Arrival()
        # Weakly held: a handle dropped before its result came leaves nothing here.
        state[1][key] = arrival
    return arrival, (topic, max_bytes)


def _receiver(waiting: weakref.WeakValueDictionary) -> Any:
    def receive(event: Any) -> None:  # on the client's event loop: no waiting here
        _timestamp, message = event
        if not isinstance(message, dict):
            return
        with _lock:
            arrival = waiting.pop(message.get("key"), None)
        if arrival is not None:
            arrival.set(message.get("result"))

    return receive
