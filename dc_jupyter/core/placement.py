"""Which worker the next batch of a map goes to, once its items' duration is known.

Dask places a task when it is submitted, from its estimate of each worker's
queue. For a map's batches that estimate is poor (batches of one function
differ in size, so their mean duration says little about one), and the last
batches of a map landed behind long queues while other workers sat idle: on
8 workers with 50 ms items, workers ended up to 200 ms apart. The map knows
better: it measured the seconds per item and knows what it sent where. So it
sends each batch to the worker whose queue empties first, and only while that
queue holds less than ``queue_seconds`` of work; every worker then runs dry at
about the same time.

The pin is loose (``allow_other_workers``): a batch sent to a worker that has
left runs elsewhere.
"""

from __future__ import annotations

import time


class Placement:
    """Estimated backlog of every worker, from what the map sent and what came back."""

    def __init__(self, threads: dict[str, int]) -> None:
        #: Backends that place work themselves (in-process, executors) name no workers.
        self.active = bool(threads)
        self._listed = threads
        self._threads = {worker: max(1, n) for worker, n in threads.items()}
        self._queued: dict[str, float] = dict.fromkeys(self._threads, 0.0)  # seconds of work
        self._free_at: dict[str, float] = dict.fromkeys(self._threads, 0.0)  # monotonic

    def __bool__(self) -> bool:
        return self.active

    def least_loaded(self, now: float | None = None) -> tuple[str, float]:
        """The worker whose queue empties first, and its backlog in seconds."""
        now = time.monotonic() if now is None else now
        worker = min(self._free_at, key=self._free_at.__getitem__)
        return worker, max(0.0, self._free_at[worker] - now)

    def sent(self, worker: str, seconds: float, now: float | None = None) -> None:
        """``seconds`` of work (for one thread) went to ``worker``."""
        now = time.monotonic() if now is None else now
        self._queued[worker] += seconds
        share = seconds / self._threads[worker]
        self._free_at[worker] = max(self._free_at[worker], now) + share

    def revise(self, worker: str, seconds: float) -> None:
        """Work already sent to ``worker`` is now thought to take ``seconds`` more
        (negative: less) than estimated when it was sent."""
        if worker in self._queued:
            self._queued[worker] += seconds
            self._free_at[worker] += seconds / self._threads[worker]

    def finished(self, worker: str, seconds: float, now: float | None = None) -> None:
        """A batch sent to ``worker`` with ``seconds`` of work has ended.

        The worker has just started its next batch, so what is left of its
        queue is what was sent and has not ended: the estimate starts again
        from now, correcting whatever the earlier estimates got wrong.
        """
        if worker not in self._queued:  # it has left
            return
        now = time.monotonic() if now is None else now
        queued = max(0.0, self._queued[worker] - seconds)
        self._queued[worker] = queued
        self._free_at[worker] = now + queued / self._threads[worker]

    def update(self, threads: dict[str, int]) -> None:
        """The cluster's workers now: new ones get work, departed ones no more
        (what was sent to them runs elsewhere, as the pin is loose)."""
        if not self.active or threads is self._listed or not threads:
            return
        self._listed = threads
        for worker in list(self._threads):
            if worker not in threads:
                del self._threads[worker], self._queued[worker], self._free_at[worker]
        for worker, n in threads.items():
            self._threads[worker] = max(1, n)
            self._queued.setdefault(worker, 0.0)
            self._free_at.setdefault(worker, 0.0)

    @property
    def threads(self) -> int:
        """Worker threads in all."""
        return sum(self._threads.values())
