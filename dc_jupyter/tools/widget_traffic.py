"""Measure the widget traffic of a map: how many comm messages a live ``MapView`` sends.

The SPEC says widgets cost the same for 10 tasks and for 1,000,000: updates
are throttled by time (``monitor.INTERVAL``), never sent per task or item.
``count_updates`` proves it on a real cluster; the benchmark and the tests use
it. Not used when running work: while it measures it swaps ipywidgets' comm
factory for a counting one, so do not call it while other widgets are being
created (e.g. from a notebook cell that shows widgets at the same time).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Traffic", "count_updates", "counting_comms"]


@dataclass(frozen=True)
class Traffic:
    """What a live map widget sent while one map ran."""

    items: int
    tasks: int  # how many tasks (batches) the items went out in
    seconds: float  # wall time from submit to the final refresh
    updates: int  # comm "update" messages of all the view's widgets
    bar_updates: int  # of those, the bar's (the view's HTML): at most one per refresh

    @property
    def updates_per_second(self) -> float:
        return self.updates / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def counting_comms() -> Iterator[list[dict]]:
    """Widgets created inside the block get comms that record what they send.

    Yields the list of sent messages: ``{"comm": id, "type": msg_type,
    "method": "update" | ...}``. The comms are the ``comm`` package's
    ``DummyComm`` (what ipywidgets uses outside a kernel): nothing reaches a
    front end, so this works in scripts and tests.
    """
    import comm

    sent: list[dict] = []

    class CountingComm(comm.DummyComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            sent.append(
                {"comm": self.comm_id, "type": msg_type, "method": (data or {}).get("method")}
            )

    original = comm.create_comm
    comm.create_comm = lambda **kwargs: CountingComm(**kwargs)
    try:
        yield sent
    finally:
        comm.create_comm = original


def count_updates(
    n_items: int, delay: float = 0.0, client: Any = None, timeout: float = 300
) -> Traffic:
    """Map ``n_items`` trivial calls on the current cluster (or ``client``) under a
    live ``MapView`` and count the widget updates it sent.

    ``delay`` seconds of sleep per item make a short map last long enough to
    move. The view is refreshed by the real monitor thread and closed as a
    blocking ``.compute()`` would close it; nothing is displayed.

    >>> t = count_updates(200_000)  # doctest: +SKIP
    >>> t.updates, t.seconds        # doctest: +SKIP
    (64, 3.1)
    """
    from dc_jupyter.core.function import compute_this
    from dc_jupyter.ui.monitor import monitor
    from dc_jupyter.ui.widgets import MapView

    def trivial(x):  # defined here, so it travels by value: workers lack dc_jupyter
        if delay:
            time.sleep(delay)
        return x

    remote = compute_this(client=client)(trivial)
    with counting_comms() as sent:
        started = time.monotonic()
        handle = remote.map(range(n_items)).submit()
        view = MapView(handle)  # opens its widgets' comms
        monitor.add(view)
        try:
            handle.result(timeout=timeout)
        except BaseException:
            handle.cancel()
            raise
        finally:
            view.close()
        seconds = time.monotonic() - started
    if not view.state.finished or view.state.ended != n_items:
        raise RuntimeError(f"the view ended at {view.state.ended}/{n_items}, not at its total")
    updates = [m for m in sent if m["type"] == "comm_msg" and m["method"] == "update"]
    return Traffic(
        items=n_items,
        tasks=handle.tasks_sent,
        seconds=seconds,
        updates=len(updates),
        bar_updates=sum(1 for m in updates if m["comm"] == view.html.model_id),
    )
