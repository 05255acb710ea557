"""How ``func.map`` groups items into tasks: checking items up front, sizing batches.

Not the dispatch itself (that is ``core.map.MapFuture``) and nothing Dask-specific:
only the arithmetic of batch sizes and the pickling of items.

Before anything is measured, the items are split evenly over the first
batches (as many as go out before a result is back; bytes permitting) and the
worker stops each after a time budget (``remote.job.run_batch``), handing
back the items it did not reach. So a trivial function gets through a map in
one wave, and a slow one is never bundled beyond its budget. After that,
batches are sized from the time the workers measured, towards
``batch-seconds`` of work per task: a trivial function gets thousands of
items per task, a 50 ms one ~10. Near the
end batches shrink again so every worker finishes at about the same time.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence

from dc_jupyter.core import pickling
from dc_jupyter.errors import SerializationError
from dc_jupyter.remote import job as remote_job

#: A batch may run for this many times ``batch-seconds`` before its worker stops
#: it and hands back the rest: room for items slower than the measured mean,
#: without splitting every batch that runs a little long.
BUDGET_FACTOR = 2.0
#: Work worth less than this is not split over threads: a Dask task costs a few
#: milliseconds itself.
MIN_TASK_SECONDS = 0.01


class BatchSizer:
    """Decide how many items the next batch of a map takes."""

    def __init__(
        self,
        slots: int,
        target_seconds: float,
        max_bytes: int,
        bytes_per_item: float,
    ) -> None:
        self.slots = max(1, slots)
        self.target_seconds = target_seconds
        self.max_items_by_bytes = max(1, int(max_bytes // max(bytes_per_item, 1.0)))
        self.seconds_per_item: float | None = None
        self.largest = 1

    @property
    def budget(self) -> float:
        """Seconds of calls after which a worker stops a batch (see ``run_batch``)."""
        return self.target_seconds * BUDGET_FACTOR

    def record(self, count: int, busy_seconds: float) -> None:
        """Learn from a finished batch: ``count`` items took ``busy_seconds`` of calls."""
        if count > 0:
            self.seconds_per_item = busy_seconds / count

    def tasks_per_thread(self, minimum: int, queue_seconds: float, cap: int = 32) -> int:
        """How many batches to keep in flight per worker thread.

        Enough to cover ``queue_seconds`` of work, so a worker never waits for the
        notebook to hear of a finished batch and send the next one (the round trip
        is tens of milliseconds on a busy machine: with 50 ms functions, three
        queued tasks were not enough at 8 workers).
        """
        if self.seconds_per_item is None:
            return minimum
        per_batch = max(self.seconds_per_item * self.largest, 1e-3)
        return max(minimum, min(cap, math.ceil(queue_seconds / per_batch)))

    def next_size(self, remaining: int, unmeasured_batches: int | None = None) -> int:
        """Items for the next batch, when ``remaining`` items are not sent yet.

        Before anything is measured, the items are split evenly over the
        ``unmeasured_batches`` that may still go out (default: one per thread;
        the worker's budget bounds each): batches of one size, so every worker
        gets as many items, whatever they cost. (A thread's share of what was
        left, for each batch, gave the workers of the first wave 15 to 27 items
        each of 20, on 4 workers.)
        """
        if remaining <= 0:
            return 0
        if self.seconds_per_item is None:
            size = share = math.ceil(remaining / max(1, unmeasured_batches or self.slots))
        else:
            size = max(1, int(self.target_seconds / max(self.seconds_per_item, 1e-7)))
            # Leave work for every thread to the end, so none idles while one
            # finishes; but a share worth less than a task's own cost (a trivial
            # map's last few hundred items) goes in one task, not in a tail of
            # ever smaller ones.
            worth = math.ceil(MIN_TASK_SECONDS / max(self.seconds_per_item, 1e-9))
            share = min(remaining, max(math.ceil(remaining / self.slots), worth))
        size = min(size, share, self.max_items_by_bytes)
        self.largest = max(self.largest, size)
        return max(1, size)


def check_items(items: Sequence[tuple], name: str, modules: set[str] | None = None) -> float:
    """Pickle every item (in chunks, at C speed) before anything is sent.

    Returns the mean pickled size of an item in bytes. Raises
    ``SerializationError`` naming the index of the first item that cannot be
    pickled, and which argument of it. ``modules`` gets the modules they refer to.
    """
    total_bytes = 0
    start, chunk = 0, 256
    while start < len(items):
        part = items[start : start + chunk]
        try:
            size = len(pickling.dumps(part, modules))
        except Exception:
            _raise_for_first_bad(part, start, name)
            raise
        total_bytes += size
        start += len(part)
        # Keep each chunk around 4 MB so checking large items does not double memory.
        per_item = max(size / len(part), 1.0)
        chunk = max(1, min(chunk * 4, int(4_000_000 / per_item)))
    return total_bytes / len(items) if items else 0.0


def pickle_plain(items: Sequence[tuple]) -> bytes:
    """Pickle a batch of plain values (ints, strings, ...) with the C pickler."""
    return pickle.dumps(items, protocol=remote_job.PICKLE_PROTOCOL)


def plain_item_bytes(items: Sequence[tuple], sample: int = 1000) -> float:
    """The mean pickled size of plain items, from about ``sample`` of them spread
    over the list (they always pickle; pickling all 200,000 only to size them
    cost as much as sending them)."""
    if not items:
        return 0.0
    picked = items[:: max(1, len(items) // sample)]
    return len(pickle_plain(picked)) / len(picked)


def _raise_for_first_bad(part: Sequence[tuple], offset: int, name: str) -> None:
    for position, item in enumerate(part):
        try:
            pickling.dumps(item)
        except Exception:
            labelled = [(f"argument {i + 1}", value) for i, value in enumerate(item)]
            culprit = pickling.find_unpicklable(labelled)
            what = (
                f"{culprit[0]} is a {pickling.type_name(culprit[1])}, which cannot be pickled "
                f"({type(culprit[2]).__name__}: {culprit[2]})"
                if culprit
                else "it cannot be pickled"
            )
            raise SerializationError(
                f"{name}.map(): item {offset + position}: {what}. Nothing was sent. Pass "
                "plain data, or create the object inside the function instead."
            ) from (culprit[2] if culprit else None)
