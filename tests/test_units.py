"""The pure parts, without a cluster: batch sizing, version comparison, the
rendering of states, the monitor's pace, decorated methods."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import cloudpickle
import pytest

from dc_jupyter import compute_this
from dc_jupyter.backends.base import BatchChannel
from dc_jupyter.cell.futures import CellFuture
from dc_jupyter.core.batching import BatchSizer
from dc_jupyter.core.futures import JobFuture
from dc_jupyter.core.map import MapFuture, MapProgress
from dc_jupyter.remote.job import run_batch
from dc_jupyter.ui import monitor, render

# -- batch sizing ----------------------------------------------------------------


def sizer(slots=4, target=0.05, max_bytes=1_000_000, bytes_per_item=10.0):
    return BatchSizer(slots, target, max_bytes=max_bytes, bytes_per_item=bytes_per_item)


def test_the_first_batches_split_the_items_evenly_then_follow_the_measured_time():
    s = sizer()
    # nothing measured: the items are split evenly over the batches that may go
    # out before anything is measured (the worker's time budget stops a slow
    # function), so each worker gets as many and a trivial map needs one wave
    sizes, left = [], 100_003
    for waiting in range(12, 0, -1):
        sizes.append(s.next_size(left, unmeasured_batches=waiting))
        left -= sizes[-1]
    assert left == 0 and max(sizes) - min(sizes) <= 1, sizes
    assert s.next_size(100_000) == 25_000  # never more than a thread's share
    assert s.budget == pytest.approx(0.1)  # twice the 50 ms target
    s.record(1, 1e-6)  # 1 µs an item: 50 ms of work would be 50,000 items
    assert s.next_size(1_000_000) == 50_000
    s.record(10, 0.5)  # 50 ms an item: one per batch
    assert s.next_size(1_000_000) == 1


def test_a_trivial_maps_last_items_go_in_one_task():
    s = sizer(slots=4)
    s.record(1000, 1e-3)  # 1 µs an item: 10 ms of work is 10,000 items
    assert s.next_size(400) == 400  # not 100 for each thread: not worth four tasks
    s.record(10, 0.5)  # 50 ms an item: the last 8 are shared
    assert s.next_size(8) == 1


def test_slow_items_go_one_per_task_and_quick_ones_fill_the_target():
    s = sizer(target=0.05)
    s.record(2, 0.4)  # 200 ms an item: over the 50 ms target alone
    assert s.next_size(1000) == 1
    s = sizer(target=0.05, slots=1)
    s.record(10, 0.01)  # 1 ms an item: 50 fill 50 ms
    s.largest = 100
    assert s.next_size(1000) == 50


def test_the_end_of_a_map_is_shared_and_bytes_cap_a_batch():
    s = sizer(slots=4)
    s.record(1000, 10.0)  # 10 ms an item
    assert s.next_size(10) == 3  # 10 left for 4 threads: none gets more than 3
    assert s.next_size(0) == 0
    small = sizer(max_bytes=1000, bytes_per_item=100.0)
    small.record(1000, 1e-3)
    small.largest = 10_000
    assert small.next_size(10_000) == 10  # 10 items of 100 bytes reach 1 kB


def test_tasks_in_flight_cover_the_queue_time():
    s = sizer()
    assert s.tasks_per_thread(3, queue_seconds=0.5) == 3  # nothing measured yet
    s.record(1, 0.05)  # 50 ms batches: 10 of them cover 0.5 s
    assert s.tasks_per_thread(3, queue_seconds=0.5) == 10
    s.record(1, 1e-6)
    assert s.tasks_per_thread(3, queue_seconds=0.5, cap=32) == 32


# -- version comparison ------------------------------------------------------------


def versions(**worker_packages):
    base = {
        "python": "3.11.4",
        "cloudpickle": "3.1.1",
        "dask": "2025.1.0",
        "distributed": "2025.1.0",
    }
    return {
        "client": {"packages": base},
        "scheduler": {"packages": base},
        "workers": {"tcp://w:1": {"packages": {**base, **worker_packages}}},
    }


def test_python_needs_the_same_minor_version_and_the_rest_the_same_full_version():
    from dc_jupyter.backends.dask.versions import find_mismatches

    assert find_mismatches(versions()) == []
    assert find_mismatches(versions(python="3.11.9")) == []  # a patch release loads the same
    assert find_mismatches(versions(python="3.12.1")) == [
        "python: notebook has 3.11.4, worker tcp://w:1 has 3.12.1"
    ]
    # "full": a patch release of cloudpickle, dask or distributed is a mismatch
    assert find_mismatches(versions(cloudpickle="3.1.2")) == [
        "cloudpickle: notebook has 3.1.1, worker tcp://w:1 has 3.1.2"
    ]
    assert find_mismatches(versions(distributed="2025.1.1")) == [
        "distributed: notebook has 2025.1.0, worker tcp://w:1 has 2025.1.1"
    ]


# -- rendering the states of a job ------------------------------------------------------


def handle_of(inner: Future, name="square") -> JobFuture:
    return JobFuture(inner, name=name, key=f"{name}-1")


def finished(value) -> Future:
    f: Future = Future()
    f.set_result(cloudpickle.dumps(value))
    return f


def test_job_states_render_as_queued_running_finished_failed_cancelled():
    pending: Future = Future()
    s = render.job_state(handle_of(pending))
    assert (s.state, s.finished) == ("queued", False)
    assert render.job_text(s).startswith("square: queued, 0.")

    pending.set_running_or_notify_cancel()
    s = render.job_state(handle_of(pending), worker="tcp://10.0.0.5:4000")
    assert s.state == "running" and render.job_text(s).startswith(
        "square: running on 10.0.0.5:4000"
    )

    done = handle_of(finished(16))
    s = render.job_state(done, fetch=False)  # the waiter has not fetched it: no preview yet
    assert (s.state, s.finished, s.detail) == ("finished", False, "")
    assert done.result() == 16
    s = render.job_state(done, fetch=False)
    assert (s.state, s.finished, s.detail) == ("finished", True, "→ 16")
    assert "data-state='finished'" in render.job_html(s) and "→ 16" in render.job_html(s)

    bad: Future = Future()
    bad.set_exception(ValueError("bad input 3"))
    failed = handle_of(bad)
    with pytest.raises(ValueError):
        failed.result()
    s = render.job_state(failed)
    assert (s.state, s.detail, s.finished) == ("failed", "ValueError: bad input 3", True)

    gone: Future = Future()
    gone.cancel()
    s = render.job_state(handle_of(gone))
    assert (s.state, s.finished) == ("cancelled", True)


def test_a_displayed_handle_gets_its_preview_from_a_background_fetch():
    done = handle_of(finished([1, 2, 3]))
    s = render.job_state(done, fetch=True)
    assert s.state == "finished" and not s.finished  # fetching, in another thread
    deadline = time.monotonic() + 10
    while not render.job_state(done, fetch=True).finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert render.job_state(done).detail == "→ [1, 2, 3]"


def test_reading_an_async_cell_never_blocks_until_its_names_are_in_the_notebook():
    outcome = {"values": {"late": 1}, "deleted": [], "result": 42}
    # run_cell returns the pickled outcome; run_job pickles that return value again.
    inner = finished(cloudpickle.dumps(outcome))
    cell = CellFuture.adopt(handle_of(inner, "cell"), "In[3] %%distribute", run_async=True)
    states = []
    reader = threading.Thread(target=lambda: states.append(render.job_state(cell, fetch=True)))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading the state blocked on the namespace update"
    assert states[0].state == "finished" and not states[0].finished
    assert cell.outcome(timeout=10)["result"] == 42
    assert not render.job_state(cell).finished  # decoded, but not in the notebook yet
    cell.namespace_updated()
    s = render.job_state(cell)
    assert s.finished and s.detail == "→ 42" and s.name == "In[3] %%distribute"


def test_map_states_render_counts_rate_and_workers():
    progress = MapProgress(
        total=200, done=37, failed=1, running=2, running_tasks=2, started_at=time.monotonic() - 2
    )
    progress.per_worker = {"tcp://a:1": 30, "tcp://b:2": 8}

    class Handle:
        name = "square"

        def progress(self):
            return progress

    s = render.map_state(Handle())
    # Still running with a failure: the state says running, the count says failed.
    assert (s.name, s.state, s.ended) == ("square.map", "running", 38)
    text = render.map_text(s)
    assert text.startswith("square.map: running, 37/200 done · running 2 · ")
    assert " · failed 1 · " in text
    assert "per worker: a:1 ×30, b:2 ×8" in text


# -- the monitor's pace ---------------------------------------------------------------------


def test_the_monitor_refreshes_about_ten_times_a_second():
    ticks = []
    done = threading.Event()

    class Counting:
        def refresh(self):
            ticks.append(time.monotonic())
            if done.is_set():
                return True
            return False

    m = monitor.Monitor()
    m.add(Counting())
    time.sleep(1.0)
    done.set()
    count = len(ticks)
    # README: "about ten updates a second". A loaded machine may give fewer,
    # never many more: the bound is on flooding the browser.
    assert 2 <= count <= 15, count


# -- decorated methods ---------------------------------------------------------------------


class Account:
    def __init__(self, balance):
        self.balance = balance

    @compute_this(backend="local")
    def plus(self, amount):
        return self.balance + amount


def test_a_decorated_method_gets_its_instance():
    account = Account(5)
    assert account.plus(2).compute() == 7
    assert Account.plus(Account(10), 1).compute() == 11
    with pytest.raises(TypeError, match="amount"):
        account.plus()


# -- the one hook on cloudpickle's internals ------------------------------------------------


def test_cloudpickle_private_code_reduce_still_has_the_shape_we_patch():
    """``remote.job._code_reduce_keeping_filename`` swaps "<dynamic-code>" in the output of
    cloudpickle's private ``_code_reduce``; if cloudpickle changes that, fail here, loudly."""
    import cloudpickle.cloudpickle as internals

    code = compile("x = 1", "/notebook/cell-7.py", "exec")
    assert hasattr(internals, "_code_reduce"), "cloudpickle removed _code_reduce"
    constructor, args = internals._code_reduce(code)
    assert args.count("<dynamic-code>") == 1, "cloudpickle no longer writes <dynamic-code>"
    assert "/notebook/cell-7.py" not in args


def test_pickled_functions_keep_their_source_file_name():
    from dc_jupyter.core import pickling

    namespace: dict = {}
    exec(compile("def f():\n    return 1\n", "/notebook/cell-7.py", "exec"), namespace)
    namespace["__name__"] = "__main__"  # by value, like a notebook function
    copy = cloudpickle.loads(pickling.dumps(namespace["f"]))
    assert copy.__code__.co_filename == "/notebook/cell-7.py"
    assert copy() == 1


def test_the_private_dask_hooks_we_rely_on_still_exist():
    """Fails loudly when distributed changes a private API dc_jupyter uses (each has a
    reason: a bounded cancel from inside the event loop, no round trip per task, a
    shorter message batching interval)."""
    import inspect

    from distributed import Client
    from distributed.batched import BatchedSend

    cancel = inspect.signature(Client._cancel).parameters  # backends.dask.backend
    assert "force" in cancel
    run = inspect.signature(Client._run).parameters
    assert {"wait", "on_error"} <= set(run)
    assert "self._scheduler_identity = " in inspect.getsource(Client)  # backends.dask.install
    assert BatchedSend(interval="10ms").interval == 0.01  # backends.dask.connection

    # remote.plugins.VersionGate / VersionGateOnWorker give a worker the gate's
    # resource by hand: if these fields go, every dc_jupyter task would wait forever.
    from distributed.scheduler import SchedulerState, WorkerState
    from distributed.worker_state_machine import WorkerState as WorkerSideState

    assert {"resources", "used_resources", "versions"} <= set(WorkerState.__annotations__)
    assert "resources" in SchedulerState.__annotations__
    assert {"total_resources", "available_resources"} <= set(WorkerSideState.__annotations__)


def test_late_output_is_laid_out_as_a_cell_shows_its_output():
    from dc_jupyter.core.output import _bundle

    # Printed text only: plain text, as any cell's prints (no HTML block per line).
    assert _bundle([("stdout", "a\n"), ("stdout", "b\n")]) == {"text/plain": "a\nb\n"}
    # With stderr and a rich display: one block per run of one stream, in order.
    bundle = _bundle(
        [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "oops\n"),
         ("display", {"text/plain": "<B>", "text/html": "<b>B</b>"}), ("stdout", "c\n")]
    )  # fmt: skip
    assert bundle["text/plain"] == "a\nb\noops\n<B>\nc\n"
    html = bundle["text/html"]
    assert html.count("<pre") == 3 and ">a\nb\n</pre>" in html and ">oops\n</pre>" in html
    assert html.index("oops") < html.index("<b>B</b>") < html.index(">c\n")
    assert "error-background" in html.split("oops")[0].rsplit("<pre", 1)[1]


def test_placement_sends_to_the_worker_whose_queue_empties_first():
    from dc_jupyter.core.placement import Placement

    placement = Placement({"a": 1, "b": 2})
    assert placement and placement.threads == 3
    placement.sent("a", 1.0, now=0.0)
    placement.sent("b", 1.0, now=0.0)  # two threads: half a second each
    assert placement.least_loaded(now=0.0) == ("b", 0.5)
    placement.sent("b", 1.0, now=0.0)
    assert placement.least_loaded(now=0.2) == ("a", pytest.approx(0.8))
    # "a" ended its batch early: its estimate starts again from what is left.
    placement.finished("a", 1.0, now=0.3)
    assert placement.least_loaded(now=0.3) == ("a", 0.0)
    # A worker joins, one leaves; what ends on the departed one is ignored.
    placement.update({"a": 1, "c": 1})
    assert placement.threads == 2
    placement.sent("a", 0.5, now=0.3)
    assert placement.least_loaded(now=0.3) == ("c", 0.0)
    placement.finished("b", 1.0, now=0.4)
    # What was sent before anything was measured turns out shorter than guessed.
    placement.sent("c", 1.0, now=0.4)
    placement.revise("c", -0.7)
    assert placement.least_loaded(now=0.4) == ("c", pytest.approx(0.3))
    # Backends that place work themselves name no workers: nothing to place.
    assert not Placement({})


class _PushedAhead(BatchChannel):
    """Stands in for the Dask channel's ordering, which on a real cluster is a
    matter of milliseconds: every batch's result is here (pushed) at once, and
    Dask's future of it never says it finished."""

    fetch_together = True

    def __init__(self, function_blob: bytes) -> None:
        super().__init__(function_blob)
        self.futures: list[Future] = []
        self.blobs: dict[int, bytes] = {}

    def send(self, items_blob, key, budget=None, worker=None):
        future: Future = Future()
        self.blobs[id(future)] = run_batch(self.function_blob, items_blob, budget=budget)
        self.futures.append(future)
        return future

    def when_arrived(self, future, callback):
        callback()

    def gather(self, futures):
        return {i: self.blobs[id(f)] for i, f in enumerate(futures) if id(f) in self.blobs}


def test_a_map_takes_a_result_that_arrives_ahead_of_its_future():
    channel = _PushedAhead(cloudpickle.dumps(lambda x: x * 10))
    handle = MapFuture([(i,) for i in range(50)], name="times_ten", channel=channel, slots=2)
    assert handle.result(timeout=10) == [i * 10 for i in range(50)]
    assert channel.futures and not any(f.done() for f in channel.futures)
