"""``func.map(...)``: one lazy job over many items, results in input order."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import seconds
from .display import watching
from .errors import SerializationError
from .handle import cancel_many
from .job import Job, wait_or_cancel

if TYPE_CHECKING:
    from .decorator import RemoteFunction
    from .handle import JobFuture


class MapJob:
    """Lazy ``map`` of a ``@compute_this`` function; every item is checked up front.

    Iterables are consumed when ``map`` is called and stop at the shortest,
    like the builtin ``map``.
    """

    def __init__(self, function: RemoteFunction, iterables: tuple[Iterable, ...]) -> None:
        if not iterables:
            raise TypeError(f"{function.__name__}.map() needs at least one iterable")
        for position, iterable in enumerate(iterables):
            try:
                iter(iterable)
            except TypeError:
                raise TypeError(
                    f"{function.__name__}.map() argument {position + 1} must be iterable, "
                    f"not {type(iterable).__name__}"
                ) from None
        self.function = function
        self.items: list[tuple] = list(zip(*iterables, strict=False))
        self.jobs: list[Job] = []
        for index, item in enumerate(self.items):
            try:
                self.jobs.append(function(*item))
            except TypeError as exc:
                raise TypeError(
                    f"{function.__name__}.map(): item {index} {item!r}: {exc}"
                ) from None

    @property
    def name(self) -> str:
        return self.function.__name__

    def __len__(self) -> int:
        return len(self.items)

    def submit(self) -> MapFuture:
        """Send every item and return at once with a ``MapFuture``."""
        prepared = []
        for index, job in enumerate(self.jobs):  # pickle every item before sending any
            try:
                prepared.append(job.prepare())
            except SerializationError as exc:
                raise SerializationError(f"{self.name}.map(): item {index}: {exc}") from exc
        backend = self.function.backend()
        futures = [
            backend.submit_prepared(job, *p) for job, p in zip(self.jobs, prepared, strict=True)
        ]
        return MapFuture(futures, name=self.name)

    def compute(self, timeout: float | None = None) -> list[Any]:
        """Run every item and return the results as a list, in input order."""
        # Checked before anything is sent: a bad timeout must not leave work running.
        timeout = self.function.options.timeout if timeout is None else seconds(timeout, "timeout")
        handle = self.submit()
        with watching(handle):
            return wait_or_cancel(handle, timeout)

    run = compute

    def __repr__(self) -> str:
        return f"<MapJob {self.name} over {len(self)} items, not sent>"


@dataclass
class MapProgress:
    """A snapshot of a map, in items (not tasks), for widgets and progress bars."""

    total: int
    done: int = 0  # finished successfully
    failed: int = 0
    cancelled: int = 0
    running: int = 0  # known to be executing now, where the backend can tell
    per_worker: dict[str, int] = field(default_factory=dict)  # items each worker has taken
    started_at: float = 0.0  # time.monotonic() at submit

    @property
    def finished(self) -> bool:
        return self.done + self.failed + self.cancelled >= self.total


class MapFuture:
    """Handle of a submitted map: ``result()`` is the list of results, in order."""

    def __init__(self, futures: list[JobFuture], name: str) -> None:
        self.futures = futures
        self.name = name
        self.started_at = time.monotonic()

    @property
    def total(self) -> int:
        return len(self.futures)

    def counts(self) -> dict[str, int]:
        """How many items are finished, failed, cancelled and still pending."""
        counts = {"finished": 0, "error": 0, "cancelled": 0, "pending": 0}
        for status in (f.status for f in self.futures):
            counts[status if status in counts else "pending"] += 1
        return counts

    def progress(self) -> MapProgress:
        """How far the map is, counted in items; cheap enough to call ~10 times a second."""
        counts = self.counts()
        return MapProgress(
            total=self.total,
            done=counts["finished"],
            failed=counts["error"],
            cancelled=counts["cancelled"],
            started_at=self.started_at,
        )

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    @property
    def status(self) -> str:
        counts = self.counts()
        if counts["cancelled"]:
            return "cancelled"
        if counts["error"]:
            return "error"
        return "finished" if counts["finished"] == self.total else "pending"

    def result(self, timeout: float | None = None) -> list[Any]:
        """Wait for every item; raise the first failure (by index) naming its index."""
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        try:
            for index, future in enumerate(self.futures):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    results.append(future.result(timeout=left))
                except TimeoutError:
                    if not future.done():
                        raise
                    _note(future, index, self.name)
                except Exception:
                    _note(future, index, self.name)
        except KeyboardInterrupt:
            self.cancel()
            raise
        return results

    def cancel(self) -> bool:
        """Cancel every item not done yet, stopping running ones (one request per backend)."""
        return cancel_many(self.futures)

    def __iter__(self):
        return itertools.chain(self.futures)

    def __repr__(self) -> str:
        return f"<MapFuture {self.name} {self.counts()}>"


def _note(future: JobFuture, index: int, name: str) -> None:
    exc = future.exception()
    if exc is None:
        return
    if hasattr(exc, "add_note"):
        exc.add_note(f"(raised by item {index} of {name}.map)")
    raise exc
