"""@compute_this end to end on real `dask scheduler` / `dask worker` processes."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import dask
import pytest
from conftest import make_beating, scheduler_task_count, stopped_growing, wait_until

import dc_jupyter
from dc_jupyter import SchedulerUnreachableError, SerializationError, compute_this


def run_script(source: str, env: dict | None = None, timeout: float = 120) -> str:
    """Run ``source`` as a fresh ``__main__`` in a new interpreter; return its stdout."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- where the work runs -------------------------------------------------------


def test_embedded_default_cluster_runs_and_shuts_down():
    out = run_script(
        """
        import distributed
        from dc_jupyter import compute_this
        from dc_jupyter.backends.dask import connection

        @compute_this()
        def func(x):
            return x * x

        if __name__ == "__main__":
            print("result", func(2).compute())
            client = connection.current_client()
            info = connection.describe(client)
            print("embedded", info["embedded"], "workers", info["workers"], "threads", info["threads"])
            import os
            print("pids", *client.run(os.getpid).values())
        """,
        env={"DASK_DC_JUPYTER__LOCAL__N_WORKERS": "2"},
    )
    assert "result 4" in out
    assert "embedded True workers 2 threads 2" in out
    # Closed at interpreter exit: the worker processes are gone, not orphaned.
    pids = [int(p) for p in out.split("pids")[1].split()]
    assert len(pids) == 2 and os.getpid() not in pids

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert wait_until(lambda: all(gone(p) for p in pids), timeout=10)


def test_external_cluster_through_dask_scheduler_address_only(cluster):
    out = run_script(
        """
        from dc_jupyter import compute_this

        @compute_this
        def where(x):
            from distributed import get_worker
            return x * x, get_worker().address

        print("result", where(2).compute()[0])
        print("worker", where(3).compute()[1])
        """,
        env={"DASK_SCHEDULER_ADDRESS": cluster.address},
    )
    assert "result 4" in out
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as c:
        workers = set(c.scheduler_info()["workers"])
    worker = out.split("worker ")[1].strip()
    assert worker in workers


def test_explicit_address_client_and_config(cluster, client):
    square = compute_this(address=cluster.address)(lambda x: x * x)
    assert square(2).compute() == 4
    assert compute_this(client=client)(lambda x: x + 1)(1).compute() == 2
    with dask.config.set({"scheduler-address": cluster.address}):

        @compute_this
        def func(x):
            return x * x

        assert func(2).compute() == 4
        assert dc_jupyter.current_client().scheduler.address == cluster.address


def test_existing_default_client_is_used(cluster):
    from distributed import Client

    with Client(cluster.address) as existing:  # set as the session default
        assert dc_jupyter.current_client() is existing
        assert compute_this(lambda x: x * x)(3).compute() == 9


def test_connect_and_scheduler_file(cluster):
    client = dc_jupyter.connect(scheduler_file=str(cluster.scheduler_file))
    assert client.scheduler.address == cluster.address
    assert dc_jupyter.current_client() is client
    assert compute_this(lambda: 7)().compute() == 7
    with pytest.raises(FileNotFoundError, match="No scheduler file"):
        dc_jupyter.connect(scheduler_file="/nonexistent/scheduler.json")


def test_local_backend_runs_in_process_through_pickling():
    @compute_this(backend="local")
    def func(x):
        return x * x, os.getpid()

    value, pid = func(2).compute()
    assert value == 4 and pid == os.getpid()

    # The same pickling as the cluster: a generator result cannot travel.
    @compute_this(backend="local")
    def gen():
        return (i for i in range(3))

    with pytest.raises(TypeError, match="result of .*gen.* generator.*cannot be pickled"):
        gen().compute()


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_executor_backends(kind):
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    pool = ProcessPoolExecutor(2) if kind == "process" else ThreadPoolExecutor(2)
    with pool:

        @compute_this(backend=pool)
        def sq(x):
            return x * x, os.getpid()

        @compute_this(backend=pool)
        def add(a, b):
            return a[0] + b[0]

        value, pid = sq(2).compute()
        assert value == 4
        assert (pid != os.getpid()) == (kind == "process")
        assert add(sq(2), sq(3)).compute() == 13
        assert [v for v, _ in sq.map(range(5)).compute()] == [0, 1, 4, 9, 16]


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown backend 'spark'"):
        compute_this(backend="spark")(lambda: 1)().compute()


# -- the function-level API ------------------------------------------------------


def test_decorated_function_keeps_identity():
    @compute_this(retries=1)
    def scaled(x, scale=2):
        """Multiply x by scale."""
        return x * scale

    assert scaled.__name__ == "scaled"
    assert scaled.__doc__ == "Multiply x by scale."
    assert inspect.signature(scaled) == inspect.signature(scaled.__wrapped__)
    assert scaled.local(3) == 6 and scaled.__wrapped__(3) == 6
    assert "scaled" in repr(scaled(1))


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f(),
        lambda f: f(1, 2, c=3, b=4),
        lambda f: f(a=1, b=2, c=3),
        lambda f: f(1, 2),
        lambda f: f(1, 2, c=3, d=4, b=5),
    ],
)
def test_signature_errors_use_pythons_wording_before_connecting(call):
    def plain(a, /, b, *args, c, d=4, **kw):
        return a

    remote = compute_this(address="tcp://127.0.0.1:9")(plain)  # nothing listens there
    with pytest.raises(TypeError) as native:
        call(plain)
    start = time.monotonic()
    with pytest.raises(TypeError) as ours:
        call(remote)
    assert str(ours.value) == str(native.value)
    assert time.monotonic() - start < 0.5  # no connection attempt


def test_signatures_bind_like_a_local_call(cluster):
    @compute_this(address=cluster.address)
    def f(a, /, b, *args, c, d=4, **kw):
        return a, b, args, c, d, kw

    assert f(1, 2, 3, c=5).compute() == (1, 2, (3,), 5, 4, {})
    assert f(1, b=2, c=3, d=0, e=9).compute() == (1, 2, (), 3, 0, {"e": 9})


def test_nothing_is_sent_until_asked(cluster, client):
    before = scheduler_task_count(client)
    job = compute_this(address=cluster.address)(lambda x: x)(1)
    time.sleep(0.2)
    assert scheduler_task_count(client) == before
    assert job.run() == 1


def test_closures_lambdas_and_classes_from_main(cluster):
    out = run_script(
        """
        from dc_jupyter import compute_this

        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y
            def norm2(self):
                return self.x ** 2 + self.y ** 2

        offset = 10
        def make_adder(n):
            return lambda x: x + n + offset

        @compute_this
        def use(p, adder):
            return Point(p.norm2(), 0), adder(1)

        point, added = use(Point(3, 4), make_adder(5)).compute()
        print(type(point) is Point, point.x, added)
        """,
        env={"DASK_SCHEDULER_ADDRESS": cluster.address},
    )
    assert out.split() == ["True", "25", "16"]


def test_map_keeps_input_order(cluster):
    @compute_this(address=cluster.address)
    def slow_echo(i, delay):
        time.sleep(delay)
        return i

    delays = [0.05 * ((7 * i) % 5) for i in range(12)]
    assert slow_echo.map(range(12), delays).compute() == list(range(12))
    assert slow_echo.map([], []).compute() == []
    # Uneven lengths stop at the shortest, as the builtin map does.
    assert slow_echo.map(range(10), [0, 0, 0]).compute() == [0, 1, 2]


def test_map_names_the_first_bad_item_before_sending(cluster, client):
    @compute_this(address=cluster.address)
    def one(x):
        return x

    before = scheduler_task_count(client)
    with pytest.raises(TypeError, match=r"item 0 \(1, 'a'\).*takes 1 positional argument"):
        one.map([1, 2, 3], ["a", "b", "c"])
    with pytest.raises(SerializationError, match=r"item 2: .*_thread.lock"):
        one.map([1, 2, threading.Lock(), 4]).compute()
    assert scheduler_task_count(client) == before


def test_dependencies_run_on_cluster_without_passing_through_client(cluster):
    client_pid = os.getpid()

    class Guarded:
        """Refuses to be unpickled in the notebook process."""

        def __init__(self, value):
            self.value = value

        def __setstate__(self, state):
            if os.getpid() == client_pid:
                raise RuntimeError("an intermediate result passed through the client")
            self.__dict__.update(state)

    @compute_this(address=cluster.address)
    def sq(x):
        return Guarded(x * x)

    @compute_this(address=cluster.address)
    def add(a, b):
        return a.value + b.value

    @compute_this(address=cluster.address)
    def total(items, mapping, pair):
        return sum(i.value for i in items) + mapping["k"].value + pair[1].value

    assert add(sq(2), sq(3)).compute() == 13
    assert total([sq(1), sq(2)], mapping={"k": sq(3)}, pair=(0, sq(4))).compute() == 30


def test_submit_handle_speaks_concurrent_futures(cluster):
    @compute_this(address=cluster.address)
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    fut = nap(0.5).submit()
    assert not fut.done()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.05)
    called = []
    fut.add_done_callback(lambda f: called.append(f.result()))
    assert fut.result(timeout=30) == 0.5
    assert fut.done() and fut.status == "finished" and fut.exception() is None
    assert wait_until(lambda: called == [0.5], timeout=5)

    failing = compute_this(address=cluster.address)(lambda: 1 / 0)().submit()
    assert isinstance(failing.exception(timeout=30), ZeroDivisionError)
    assert failing.status == "error"

    long = nap(2).submit()
    assert long.cancel() is True
    assert wait_until(lambda: long.status == "cancelled", timeout=5)


# -- errors ------------------------------------------------------------------------


class CustomError(Exception):
    pass


def test_remote_exception_same_type_with_remote_source_lines(cluster):
    @compute_this(address=cluster.address)
    def explode(x):
        raise KeyError(f"missing {x}")  # the line users must see

    with pytest.raises(KeyError) as info:
        explode("thing").compute()
    text = "".join(traceback.format_exception(info.value))
    assert 'raise KeyError(f"missing {x}")  # the line users must see' in text
    assert "in explode" in text

    def local_class_error():
        class Local(ValueError):
            pass

        @compute_this(address=cluster.address)
        def raise_local():
            raise Local("mine")

        with pytest.raises(Local, match="mine"):
            raise_local().compute()

    local_class_error()


def test_unpicklable_argument_named_and_nothing_sent(cluster, client):
    @compute_this(address=cluster.address)
    def use(data, lock=None):
        return 1

    before = scheduler_task_count(client)
    with pytest.raises(SerializationError, match=r"argument 'lock'.*_thread.lock"):
        use([1, 2], lock=threading.Lock()).compute()
    assert scheduler_task_count(client) == before
    assert use([1, 2]).compute() == 1  # and the next call works


def test_unpicklable_result_names_type_and_worker_survives(cluster):
    @compute_this(address=cluster.address)
    def make_lock():
        import threading

        return threading.Lock()

    with pytest.raises(TypeError, match=r"result of make_lock\(\) is a _thread.lock"):
        make_lock().compute()
    assert compute_this(address=cluster.address)(lambda: "ok")().compute() == "ok"


def test_unreachable_scheduler_names_address_within_timeout():
    address = f"tcp://127.0.0.1:{free_port()}"
    with dask.config.set({"dc_jupyter.connect-timeout": "2s"}):
        start = time.monotonic()
        with pytest.raises(SchedulerUnreachableError, match=address) as info:
            compute_this(address=address)(lambda: 1)().compute()
        elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 8, elapsed
    assert "2 s" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_default_connect_timeout_is_seconds_not_minutes():
    from dc_jupyter import config

    assert config.seconds(config.get("connect-timeout"), "t") == 10


def test_timeout_raises_and_cancels_remote_task(cluster, client, tmp_path):
    heartbeat = str(tmp_path / "heartbeat")
    hang = compute_this(address=cluster.address, timeout=2)(make_beating())

    job = hang(heartbeat)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 2 s"):
        job.compute()
    assert time.monotonic() - start < 10
    assert os.path.getsize(heartbeat) > 0  # it was running
    assert stopped_growing(heartbeat), "the remote code kept running after the timeout"
    keys = lambda: client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))  # noqa: E731
    assert wait_until(lambda: job.key not in keys(), timeout=10)


def test_cancelling_a_job_stops_its_dependencies_on_the_workers(cluster, tmp_path):
    heartbeat = str(tmp_path / "dependency")
    slow = compute_this(address=cluster.address)(make_beating())
    use = compute_this(address=cluster.address)(lambda x: x)

    handle = use(slow(heartbeat)).submit()
    assert wait_until(lambda: os.path.exists(heartbeat), timeout=30)
    assert handle.cancel()
    assert stopped_growing(heartbeat), "the dependency kept running after its job was cancelled"


@pytest.fixture(scope="module")
def mismatched_cluster(tmp_path_factory):
    from conftest import HERE, process_cluster

    preload = str(HERE / "fake_versions_preload.py")
    with process_cluster(tmp_path_factory.mktemp("mismatch"), preload=preload) as c:
        yield c


def test_version_mismatch_names_package_and_both_versions(mismatched_cluster):
    import cloudpickle

    from dc_jupyter import VersionMismatchError

    job = compute_this(address=mismatched_cluster.address)(lambda: 1)
    with pytest.raises(VersionMismatchError) as info:
        job().compute()
    with pytest.raises(VersionMismatchError):  # checked again, not remembered as checked
        job().compute()
    message = str(info.value)
    assert f"cloudpickle: notebook has {cloudpickle.__version__}" in message
    assert "has 0.0.1" in message and "nothing was sent" in message


def test_bad_decorator_options():
    with pytest.raises(ValueError, match="retries"):
        compute_this(retries=-1)
    with pytest.raises(ValueError, match="resource 'GPU' needs a positive number"):
        compute_this(resources={"GPU": 0})
    with pytest.raises(ValueError, match="timeout must be"):
        compute_this(timeout="soon")


def test_settings_through_dask_config_env():
    out = run_script(
        """
        from dc_jupyter import config
        print(config.get("connect-timeout"), config.get("local.threads-per-worker"))
        """,
        env={"DASK_DC_JUPYTER__CONNECT_TIMEOUT": "3s"},
    )
    assert out.split() == ["3s", "1"]
