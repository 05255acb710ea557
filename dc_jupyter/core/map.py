"""``func.map(...)``: one lazy job over many items, results in input order."""

from __future__ import annotations

import functools
import gc
import itertools
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dc_jupyter import config
from dc_jupyter.config import seconds
from dc_jupyter.core import observe, output, pickling
from dc_jupyter.core.batching import BatchSizer, check_items, pickle_plain, plain_item_bytes
from dc_jupyter.core.futures import _strip_plumbing, when_done
from dc_jupyter.core.job import contains_job, wait_or_cancel
from dc_jupyter.core.placement import Placement
from dc_jupyter.errors import SerializationError
from dc_jupyter.remote import job as remote_job
from dc_jupyter.remote import output as remote_output

if TYPE_CHECKING:
    from dc_jupyter.backends.base import BatchChannel
    from dc_jupyter.core.function import RemoteFunction


class MapJob:
    """Lazy ``map`` of a ``@compute_this`` function; every item is checked up front.

    Iterables are consumed when ``map`` is called and stop at the shortest,
    like the builtin ``map``. Items travel in batches (see ``batching``), but
    results, errors and progress stay per item.
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
        #: What each line an item prints starts with (default ``[item 3] ``).
        self.item_prefix: Callable[[int], str] | None = None
        #: Top-level modules the map refers to (a sweep adds its cell's imports).
        self.modules: set[str] = set()
        what = f"{function.__name__}.map()"
        # Plain values (most maps) skip the walk for jobs, which cost ~8 us an item.
        if len(iterables) == 1:
            values = take_items(iterables[0], what)
            plain = set(map(type, values)) <= _PLAIN  # C speed
            #: Each item is its one argument, not a tuple: a map of one iterable of
            #: plain values (most maps) sends and unpickles a flat list, ~5x cheaper
            #: than 1-tuples (and zip builds none).
            self.single = plain
            self.items: list = values if plain else [(value,) for value in values]
        else:
            self.single = False
            self.items = take_items(zip(*iterables, strict=False), what)
            plain = set(map(type, itertools.chain.from_iterable(self.items))) <= _PLAIN
        #: Only plain values: nothing to check, and the C pickler sends them.
        self.plain = plain
        if self.items:
            # Every item has len(iterables) positional arguments, so binding
            # one checks them all (the binder only looks at the shape).
            try:
                function._bind(*self.arguments(0))
            except TypeError as exc:
                raise TypeError(
                    f"{function.__name__}.map(): item 0 {_preview(self.arguments(0))}: {exc}"
                ) from None
        for index, item in enumerate(() if plain else self.items):
            if any(contains_job(value) for value in item):
                raise TypeError(
                    f"{function.__name__}.map(): item {index} holds a job; map takes plain "
                    "values. Compute the jobs first, or call the function once per job "
                    "(f(job)) and compute those."
                )

    @property
    def name(self) -> str:
        return self.function.__name__

    def arguments(self, index: int) -> tuple:
        """The positional arguments of item ``index``."""
        item = self.items[index]
        return (item,) if self.single else item

    def __len__(self) -> int:
        return len(self.items)

    def submit(self) -> MapFuture:
        """Check and send the items and return at once with a ``MapFuture``."""
        modules = set(self.modules)
        # nothing sent if one is bad; plain values always pickle: only their size matters
        bytes_per_item = (
            plain_item_bytes(self.items)
            if self.plain
            else check_items(self.items, self.name, modules)
        )
        try:  # pickled once per map; every batch shares this blob
            function_blob = pickling.dumps(self.function.__wrapped__, modules)
        except Exception as exc:
            raise SerializationError(
                f"Cannot send the function {self.name}: {type(exc).__name__}: {exc}. "
                "Nothing was sent."
            ) from exc
        backend = self.function.backend()
        backend.ensure_modules(modules, f"{self.name}.map()")  # before anything is sent
        channel = backend.open_map(function_blob, self.function.options, self.name)
        channel.single = self.single
        return MapFuture(
            self.items,
            name=self.name,
            channel=channel,
            # the channel that names its workers has asked the cluster already
            slots=sum(channel.workers.values()) or backend.slots(),
            bytes_per_item=bytes_per_item,
            item_prefix=self.item_prefix,
            plain=self.plain,
        )

    def compute(self, timeout: float | None = None, errors: str = "raise") -> list[Any]:
        """Run every item and return the results as a list, in input order.

        ``errors="raise"`` (default) raises the failure of the first failing
        item; ``errors="return"`` puts each failed item's exception in its
        place in the list instead, so the successful results are kept.
        """
        # Checked before anything is sent: a bad timeout must not leave work running.
        timeout = self.function.options.timeout if timeout is None else seconds(timeout, "timeout")
        __tracebackhide__ = True
        handle = self.submit()
        with observe.watching(handle):
            wait_or_cancel(handle, timeout)
            return handle.result(errors=errors)

    run = compute

    def __repr__(self) -> str:
        return f"<MapJob {self.name} over {len(self)} items, not sent>"


def _item_prefix(index: int) -> str:
    return f"[item {index}] "


#: Types that never hold a job.
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})


def take_items(iterable: Iterable, what: str, error: type[Exception] = ValueError) -> list:
    """The items of ``iterable`` as a list; more than ``map.max-items`` raise ``error``.

    An endless iterator (``itertools.count()``) would otherwise fill memory.
    """
    limit = int(config.get("map.max-items", 1_000_000))
    # Python's collector would walk the whole heap (dask, distributed: millions of
    # objects) several times while 200,000 new tuples pile up: ~3x slower here.
    enabled = gc.isenabled()
    gc.disable()
    try:
        items = list(itertools.islice(iterable, limit + 1))
    finally:
        if enabled:
            gc.enable()
    if len(items) > limit:
        raise error(
            f"{what}: the input has more than {limit:,} items; is it endless, like "
            "itertools.count()? Nothing was sent. Pass a finite iterable (e.g. "
            "itertools.islice(it, n)), or raise the limit with "
            "dask.config.set({'dc_jupyter.map.max-items': N})."
        )
    return items


def _preview(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # an error message must not fail on a broken __repr__
        return f"<{type(value).__name__}>"


@dataclass
class MapProgress:
    """A snapshot of a map, in items (not tasks), for widgets and progress bars."""

    total: int
    done: int = 0  # finished successfully
    failed: int = 0
    cancelled: int = 0
    running: int = 0  # known to be executing now, where the backend can tell
    running_tasks: int = 0  # of those, the tasks (batches): at most one per worker thread
    per_worker: dict[str, int] = field(default_factory=dict)  # items each worker has taken
    started_at: float = 0.0  # time.monotonic() at submit

    @property
    def finished(self) -> bool:
        return self.done + self.failed + self.cancelled >= self.total


class MapFuture:
    """Handle of a submitted map: ``result()`` is the list of results, in order.

    It feeds the items to the backend in batches (sized by ``BatchSizer``),
    keeping about ``queue-seconds`` of work (at least ``tasks-per-thread``
    batches) per worker thread in flight, and
    sends the next batches from the completion callback of the previous ones.
    Everything it counts is in items; ``progress()`` only copies counters.
    """

    def __init__(
        self,
        items: list[tuple],
        name: str,
        channel: BatchChannel,
        slots: int,
        bytes_per_item: float = 0.0,
        item_prefix: Callable[[int], str] | None = None,
        plain: bool = False,
    ) -> None:
        self.name = name
        # Plain values go through the C pickler: cloudpickle's hook costs a
        # Python call per tuple (~40% of a trivial map's time on the notebook side).
        self._dumps = pickle_plain if plain else pickling.dumps
        self.started_at = time.monotonic()
        self._items = items
        self._channel: BatchChannel | None = channel
        self._fetch_together = channel.fetch_together
        self._gather = channel.gather  # kept: the channel is let go when the map ends
        self._slots = max(1, slots)
        self._sizer = BatchSizer(
            self._slots,
            float(config.get("map.batch-seconds", 0.5)),
            max_bytes=_channel_threshold(channel),
            bytes_per_item=bytes_per_item,
        )
        self._tasks_per_thread = int(config.get("map.tasks-per-thread", 3))
        self._queue_seconds = float(config.get("map.queue-seconds", 0.5))
        self._max_in_flight = self._slots * self._tasks_per_thread
        # Where measured batches go (empty: the backend places them itself).
        self._placement = Placement(getattr(channel, "workers", {}))
        self._pinned: dict[int, tuple[str, float]] = {}  # batch -> (worker, seconds sent)
        self._guessed: list[int] = []  # pinned batches sent before anything was measured
        self._token = uuid.uuid4().hex[:12]
        self._results: list[Any] = [None] * len(items)
        self._errors: dict[int, BaseException] = {}
        self._error_tbs: dict[int, Any] = {}  # each error's traceback as it arrived
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._next = 0  # first item not sent yet
        # (start, count) of items a worker handed back unrun (its batch used up
        # its time budget), sent again before the items not sent yet
        self._returned: list[tuple[int, int]] = []
        self._alone: list[int] = []  # items of crashed batches, to send one per task
        self._alone_batch: int | None = None  # the one such task in flight
        self._retried: set[int] = set()  # items that crashed alone once already
        self._in_flight: dict[int, tuple[int, int, Any]] = {}  # batch -> (start, count, future)
        self._batches = 0
        self._done = self._failed = self._cancelled = 0
        self._per_worker: dict[str, int] = {}
        self._busy: dict[str, float] = {}
        self._pumping = self._pump_again = self._stopped = False
        self._collector: threading.Thread | None = None
        self._ready: list[tuple[int, Any]] = []  # finished Dask batches not fetched yet
        self._ready_event = threading.Event()
        self._callbacks: list[Callable[[MapFuture], Any]] = []
        # Output of the batches (keys <name>-map-<token>-<n>), each line marked with its item.
        self._prefix = item_prefix or _item_prefix
        self._output = output.open_output(
            getattr(channel, "client", None),
            f"{name}-map-{self._token}",
            locate=self._item_of,
            prefix=item_prefix or _item_prefix,
            max_lines=output.MAP_MAX_LINES,
        )
        if not items:
            self._finish()
        else:
            self._pump()

    # -- feeding batches ---------------------------------------------------
    @property
    def total(self) -> int:
        return len(self._items)

    @property
    def tasks_sent(self) -> int:
        """How many tasks (batches) the items went out in so far."""
        return self._batches

    def _plan(self) -> tuple[int, int, int, str | None] | None:
        """Under the lock: the next batch to send and the worker it is meant for,
        or None (enough in flight / none left)."""
        self._max_in_flight = self._slots * self._sizer.tasks_per_thread(
            self._tasks_per_thread, self._queue_seconds
        )
        if self._stopped or len(self._in_flight) >= self._max_in_flight:
            return None
        if self._alone and self._alone_batch is None:
            start, size, batch = self._alone.pop(0), 1, self._batches
            self._batches += 1
            self._in_flight[batch] = (start, size, None)
            self._alone_batch = batch
            return batch, start, size, None
        worker = None
        per_item = self._sizer.seconds_per_item
        if self._placement:
            worker, backlog = self._placement.least_loaded()
            if per_item is not None and backlog >= self._queue_seconds:
                return None  # every worker has enough queued
        remaining = sum(count for _, count in self._returned) + self.total - self._next
        size = self._sizer.next_size(remaining, self._max_in_flight - len(self._in_flight))
        if not size:
            return None
        batch = self._batches
        if self._returned:
            start, count = self._returned[0]
            size = min(size, count)
            if size == count:
                self._returned.pop(0)
            else:
                self._returned[0] = (start + size, count - size)
        else:
            start = self._next
            self._next += size
        self._batches += 1
        self._in_flight[batch] = (start, size, None)
        if worker is not None:
            # Before anything is measured a batch may run until its budget.
            seconds = self._sizer.budget if per_item is None else size * per_item
            self._pinned[batch] = (worker, seconds)
            if per_item is None:
                self._guessed.append(batch)
            self._placement.sent(worker, seconds)
        return batch, start, size, worker

    def _pump(self) -> None:
        # Re-entrant by design: with the local backend a batch finishes inside
        # send(), and its callback asks for more while we are still sending.
        with self._lock:
            if self._pumping:
                self._pump_again = True
                return
            self._pumping = True
        while True:
            channel = self._channel
            workers = channel.workers if channel is not None and self._placement else None
            with self._lock:
                if workers:
                    self._placement.update(workers)
                    self._slots = self._sizer.slots = self._placement.threads
                plans = []
                # Where sending costs a round trip, all that is due goes together;
                # in-process, a batch runs inside send(), so one at a time.
                # At most one per thread in one message: the scheduler takes longer
                # over a larger graph, and the first ones start later.
                while (plan := self._plan()) is not None:
                    plans.append(plan)
                    if not self._fetch_together or len(plans) >= self._slots:
                        break
                if not plans:
                    if self._pump_again:
                        self._pump_again = False
                        continue
                    self._pumping = False
                    return
            self._send(plans)

    def _send(self, plans: list[tuple[int, int, int, str | None]]) -> None:
        budget = self._sizer.budget
        try:
            requests = [
                (
                    self._dumps(self._items[start : start + size]),
                    f"{self.name}-map-{self._token}-{batch}",
                    budget,
                    worker,
                )
                for batch, start, size, worker in plans
            ]
            if self._output is None:  # in-process: its lines are marked as it prints
                start = plans[0][1]
                with remote_output.prefixed_here(lambda position: self._prefix(start + position)):
                    futures = self._channel.send_many(requests)
            else:
                futures = self._channel.send_many(requests)
        except Exception as exc:  # e.g. the connection closed meanwhile
            for batch, *_ in plans:
                self._settle(batch, error=self._batch_error(exc, None))
            return
        for (batch, start, size, *_), future in zip(plans, futures, strict=True):
            with self._lock:
                if batch in self._in_flight:
                    self._in_flight[batch] = (start, size, future)
            when_done(future, functools.partial(self._on_batch_done, batch))
            if self._fetch_together:
                # Weakly: the channel keeps the arrival, and the map keeps the channel.
                arrived = functools.partial(_on_arrival, weakref.ref(self), batch)
                self._channel.when_arrived(future, arrived)

    def _on_batch_done(self, batch: int, future: Any) -> None:
        if not self._fetch_together:
            self._collect(batch, future)  # the result is already here
            return
        # Fetching costs a round trip (Dask): one collector thread fetches
        # whatever has finished in a single call, then sends the next batches.
        with self._lock:
            if batch not in self._in_flight:
                # Settled already, by its result that arrived ahead: kept here
                # after the map's end, its future would keep the task on the cluster.
                return
            self._ready.append((batch, future))
            if self._collector is None and not self._finished.is_set():
                self._collector = threading.Thread(
                    target=self._collect_loop, name="dc_jupyter-map-collect", daemon=True
                )
                self._collector.start()
        self._ready_event.set()

    def _collect_loop(self) -> None:
        while not self._finished.is_set():
            self._ready_event.wait()
            with self._lock:
                ready, self._ready = self._ready, []
                self._ready_event.clear()
            if ready:
                self._collect_many(ready)
            ready = None  # see _collect_many: keep no batch future in this frame

    def _collect_many(self, ready: list[tuple[int, Any]]) -> None:
        # A batch whose result was pushed comes twice (when it arrives, and when
        # Dask says it finished): once is enough.
        with self._lock:
            ready[:] = [(b, f) for b, f in dict(ready).items() if b in self._in_flight]
        blobs = self._gather([f for _, f in ready])
        try:
            for position, (batch, future) in enumerate(ready):
                if position in blobs:
                    self._decode(batch, blobs[position], future)
                elif future.done():  # else it is here by its arrival: see gather
                    self._collect(batch, future, pump=False)
        finally:
            # Item errors come back with tracebacks rebuilt by tblib out of real
            # frames whose f_back chain reaches this frame (and the collector
            # loop's): emptied, they keep no batch future, so no result stays
            # pinned on the cluster while the user holds an exception.
            ready.clear()
            blobs.clear()
            future = None  # noqa: F841
        self._pump()

    def _collect(self, batch: int, future: Any, pump: bool = True) -> None:
        try:
            if future.cancelled() and (self._stopped or not self._lost(future)):
                self._settle(batch, cancelled=True)
                return
            blob = future.result()
        except BaseException as exc:  # the whole task failed (worker died, ...)
            self._settle(batch, error=self._batch_error(exc, future))
            # The error's traceback holds the Dask future (as in JobFuture.result):
            # release it, or the erred task stays on the scheduler while the
            # user holds the exception.
            release = getattr(future, "release", None)
            if release is not None:
                release()
        else:
            self._decode(batch, blob, future)
        future = blob = None  # noqa: F841 - as in _collect_many
        if pump:
            self._pump()

    def _lost(self, future: Any) -> bool:
        channel = self._channel
        return channel is not None and channel.lost_scheduler(future)

    def _decode(self, batch: int, blob: Any, future: Any) -> None:
        """Settle a batch from its result blob; if the blob cannot be unpickled here
        (e.g. one item returned a class that exists only on the workers), the
        workers re-pickle it item by item, so only the bad items fail."""
        try:
            values, errors, meta = pickling.loads_result(blob)
        except Exception as exc:
            split = self._split(future)
            if split is None:
                self._settle(batch, error=exc)
                return
            values, errors, meta = split
        finally:
            future = blob = None  # noqa: F841 - as in _collect_many
        self._settle(batch, values=values, errors=errors, meta=meta)

    def _split(self, future: Any) -> tuple[list, dict, dict] | None:
        channel = self._channel
        splitter = getattr(channel, "split", None)
        if splitter is None:
            return None
        try:
            blob, future = splitter(future), None  # as in _collect_many
            item_blobs, error_blobs, meta = pickling.loads_result(blob)
        except Exception:
            logging.getLogger(__name__).debug("dc_jupyter: could not split a batch", exc_info=True)
            return None
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        for position, item_blob in enumerate(item_blobs):
            value = None
            try:
                if position in error_blobs:
                    errors[position] = pickling.loads_result(error_blobs[position])
                else:
                    value = pickling.loads_result(item_blob)
            except Exception as exc:
                errors[position] = SerializationError(
                    f"The result of item {position} of a batch of {self.name}.map cannot be "
                    f"unpickled in the notebook: {type(exc).__name__}: {exc}. Its type may exist "
                    "only on the workers (a module the notebook cannot import): return plain "
                    "data instead, or install that module here too."
                )
            values.append(value)
        return values, errors, meta

    def _batch_error(self, exc: BaseException, future: Any) -> BaseException:
        """The error of a whole failed batch, in words a user understands."""
        if not isinstance(exc, Exception):
            return exc
        channel = self._channel
        clearer = None if channel is None else channel.failure(exc, f"{self.name}.map", future)
        if clearer is None:
            return _strip_plumbing(exc)
        clearer.__cause__ = exc
        return clearer

    def _settle(self, batch, *, values=None, errors=None, meta=None, error=None, cancelled=False):
        with self._lock:
            entry = self._in_flight.pop(batch, None)
            if entry is None:
                return
            # Not the future: item errors get tracebacks rebuilt from here
            # (core.tracebacks), and their frames keep this frame's locals alive,
            # which would pin the batch's result on the cluster.
            start, count = entry[0], entry[1]
            entry = None
            pinned = self._pinned.pop(batch, None)
            if pinned is not None:
                self._placement.finished(*pinned)
            if batch == self._alone_batch:
                self._alone_batch = None
            if cancelled or self._stopped and error is not None:
                self._cancelled += count
            elif error is not None and self._rerun_alone(start, count, error):
                pass
            elif error is not None:
                for index in range(start, start + count):
                    self._errors[index] = error
                    self._error_tbs[index] = error.__traceback__
                self._failed += count
            else:
                ran = meta.get("count", count)
                if ran < count:  # the batch used up its time budget: the rest goes again
                    self._return_unrun(start + ran, count - ran)
                self._results[start : start + ran] = values
                for position, exc in errors.items():
                    exc = remote_job.user_exception(exc)
                    self._errors[start + position] = _strip_plumbing(exc)
                    self._error_tbs[start + position] = exc.__traceback__
                self._failed += len(errors)
                self._done += ran - len(errors)
                worker = meta["worker"]
                self._per_worker[worker] = self._per_worker.get(worker, 0) + ran
                self._busy[worker] = self._busy.get(worker, 0.0) + meta["busy"]
                self._sizer.record(ran, meta["busy"])
                if self._guessed:
                    self._revise_guesses()
            if self._done + self._failed + self._cancelled >= self.total:
                self._finish()
        if self._finished.is_set():
            self._run_callbacks()

    def _revise_guesses(self) -> None:
        """Under the lock, once the first batch is measured: the batches sent
        before it were counted at their whole budget, but most end sooner.
        Counted at what they will take, the placement's backlogs are right from
        here on, both between workers and against ``queue-seconds`` (with
        first-wave batches of falling sizes, counted alike, 8 workers got 34 to
        47 items of 40 each)."""
        per_item = self._sizer.seconds_per_item
        for batch in self._guessed:
            pinned, entry = self._pinned.get(batch), self._in_flight.get(batch)
            if pinned is None or entry is None:
                continue
            worker, seconds = pinned
            revised = min(seconds, entry[1] * per_item)
            self._placement.revise(worker, revised - seconds)
            self._pinned[batch] = (worker, revised)
        self._guessed.clear()

    def _return_unrun(self, start: int, count: int) -> None:
        """Under the lock: items a worker handed back go out again, lowest first."""
        self._returned.append((start, count))
        self._returned.sort()

    def _rerun_alone(self, start: int, count: int, error: BaseException) -> bool:
        """Under the lock: queue the items of a batch whose process died, to run alone.

        The process died running one of them (``os._exit``, a segfault, out of
        memory). Run alone, one task at a time, only the bad one fails. Tasks
        queued on the dying worker die with it, so an item that crashed alone
        gets one more try, at the end.
        """
        if not getattr(error, "dc_jupyter_crash", False):
            return False
        if count > 1:
            self._alone.extend(range(start, start + count))
            return True
        if start in self._retried:
            return False
        self._retried.add(start)
        self._alone.append(start)
        return True

    def _item_of(self, batch: int, position: int) -> int | None:
        """The index of the item at ``position`` of ``batch`` (while it is in flight)."""
        with self._lock:
            entry = self._in_flight.get(batch)
        return None if entry is None else entry[0] + position

    def _finish(self) -> None:
        if self._output is not None:
            self._output.finish()
        self._stopped = True
        self._finished.set()
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        self._ready_event.set()  # wakes the collector thread, which then ends

    # -- asking --------------------------------------------------------------
    def progress(self) -> MapProgress:
        """How far the map is, counted in items; cheap enough to call ~10 times a second."""
        with self._lock:
            running = running_tasks = 0
            for _start, count, future in itertools.islice(self._in_flight.values(), self._slots):
                # Dask futures cannot tell "running" from "queued": with one task per
                # thread, the oldest `slots` batches in flight are the running ones.
                is_running = getattr(future, "running", None)
                if is_running is None or is_running():
                    running += count
                    running_tasks += 1
            return MapProgress(
                total=self.total,
                done=self._done,
                failed=self._failed,
                cancelled=self._cancelled,
                running=running,
                running_tasks=running_tasks,
                per_worker=dict(self._per_worker),
                started_at=self.started_at,
            )

    def busy_seconds(self) -> dict[str, float]:
        """Seconds each worker spent in the function's calls so far."""
        with self._lock:
            return dict(self._busy)

    def counts(self) -> dict[str, int]:
        """How many items are finished, failed, cancelled and still pending."""
        p = self.progress()
        pending = p.total - p.done - p.failed - p.cancelled
        return {"finished": p.done, "error": p.failed, "cancelled": p.cancelled, "pending": pending}

    @property
    def client(self) -> Any:
        """The Dask client the map runs on; None for in-process and executor backends."""
        return getattr(self._channel, "client", None)

    @property
    def key_prefix(self) -> str:
        """What the keys of this map's tasks start with (``square-map-<token>-``)."""
        return f"{self.name}-map-{self._token}-"

    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def status(self) -> str:
        counts = self.counts()
        if counts["cancelled"]:
            return "cancelled"
        if counts["error"]:
            return "error"
        return "finished" if counts["finished"] == self.total else "pending"

    def exceptions(self) -> dict[int, BaseException]:
        """The exception of each failed item so far, by index."""
        with self._lock:
            return dict(self._errors)

    def result(self, timeout: float | None = None, errors: str = "raise") -> list[Any]:
        """Wait for every item and return the results in input order.

        ``errors="raise"`` raises the exception of the first failing item (by
        index), noting the index; ``errors="return"`` puts each failed item's
        exception in its place instead, so the successful results are kept.
        """
        __tracebackhide__ = True
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        try:
            if not self._finished.wait(timeout):
                raise TimeoutError(f"{self.name}.map did not finish within {timeout:g} s")
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self._output is not None:  # its prints come before its value
            self._output.wait_written()
        with self._lock:
            failed = dict(self._errors)
            tbs = dict(self._error_tbs)
            results = list(self._results)
            cancelled = self._cancelled
        if errors == "return":
            for index, exc in failed.items():
                results[index] = exc
            return results
        if failed:
            index = min(failed)
            exc = failed[index]
            note = (
                f"(raised by item {index} of {self.name}.map; {len(failed)} of {self.total} "
                "items failed: .compute(errors='return') or handle.result(errors='return') "
                "keeps the successful results, with each exception in its item's place)"
            )
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            raise exc.with_traceback(tbs.get(index))  # without an earlier raise's frames
        if cancelled:
            raise CancelledError(f"{self.name}.map was cancelled ({cancelled} items not run)")
        return results

    def cancel(self) -> bool:
        """Stop sending batches and cancel those not done; True if anything was left."""
        with self._lock:
            if self._finished.is_set():
                return False
            self._stopped = True
            unsent = self.total - self._next + len(self._alone)
            unsent += sum(count for _, count in self._returned)
            self._next = self.total
            self._alone.clear()
            self._returned.clear()
            self._cancelled += unsent
            futures = [f for _, _, f in self._in_flight.values() if f is not None]
            # Settled now, not when the cluster confirms: after cancel() the
            # handle says "cancelled" at once, and late callbacks find nothing.
            self._cancelled += sum(count for _, count, _ in self._in_flight.values())
            self._in_flight.clear()
            channel = self._channel
            self._finish()
        if futures and channel is not None:
            channel.cancel(futures)  # drops queued batches, stops running ones on workers
        self._run_callbacks()
        return True

    def add_done_callback(self, fn: Callable[[MapFuture], Any]) -> None:
        """Call ``fn(self)`` once every item has ended (at once if they have).

        Runs outside the map's lock, in the thread that settled the last item;
        errors in ``fn`` are logged, not raised.
        """
        with self._lock:
            if not self._finished.is_set():
                self._callbacks.append(fn)
                return
        _call_logged(fn, self)

    def _run_callbacks(self) -> None:
        with self._lock:
            if not self._finished.is_set():
                return
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:  # each exactly once: taken out under the lock
            _call_logged(fn, self)

    def __repr__(self) -> str:
        return f"<MapFuture {self.name} {self.counts()}>"

    def _ipython_display_(self) -> None:
        """Displayed in a notebook: the live progress widget, with a cancel button."""
        observe.show(self)


def _call_logged(fn: Callable[[MapFuture], Any], handle: MapFuture) -> None:
    try:
        fn(handle)
    except Exception:
        logging.getLogger(__name__).exception("dc_jupyter: a done-callback raised")


def _channel_threshold(channel: BatchChannel) -> int:
    # Batches stay below the scatter threshold so they ride inside the task.
    return int(getattr(channel, "threshold", 0) or 1_000_000)


def _on_arrival(ref: weakref.ref, batch: int) -> None:
    """A batch's result came ahead of Dask's news that it finished: collect it.

    The future is looked up, not held: an arrival that never comes (a batch
    fetched instead, or one that failed) must not keep its task on the cluster.
    """
    mapped = ref()
    if mapped is None:
        return
    with mapped._lock:
        entry = mapped._in_flight.get(batch)
    if entry is not None and entry[2] is not None:
        mapped._on_batch_done(batch, entry[2])
