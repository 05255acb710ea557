"""A corpus of bad inputs across the API (functions, ``connect()``, ``%%distribute`` options).

Each must give the right result or a clear error that names the problem, leave
nothing on the (real) cluster, and not break the next call. Inputs that used to
hang also carry a time bound. (Cell captures belong to ``%%distribute`` and
are covered with it.)
"""

from __future__ import annotations

import collections
import functools
import itertools
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import dask
import distributed  # noqa: F401  (loads its config defaults before any dask.config.set)
import pytest
from conftest import ipython_shell, scheduler_task_count, wait_until
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import dc_jupyter
from dc_jupyter import SchedulerUnreachableError, SerializationError, compute_this

cloudpickle.register_pickle_by_value(sys.modules[__name__])

DEAD = "tcp://127.0.0.1:9"  # nothing listens on the discard port


def plain(a, b=1, *, c=2):
    return a + b + c


def one(x):
    return x


def _deep(n):
    value: list = []
    for _ in range(n):
        value = [value]
    return value


def _shut_pool():
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    return pool


def _raising_iterable():
    yield 1
    raise ValueError("the input ran dry")


class Returns:
    """Expected outcome of a case that must succeed, with this value."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return f"Returns({self.value!r})"


class Permissive:
    """A proxy/mock-like argument whose ``__getattr__`` answers every name."""

    def __getattr__(self, name):
        return 1


class Broken:
    """An argument whose ``__sizeof__`` and ``__repr__`` raise."""

    def __sizeof__(self):
        raise RuntimeError("no size")

    def __repr__(self):
        raise RuntimeError("no repr")


Pair = collections.namedtuple("Pair", "a b")


def _loop() -> list:
    loop: list = []
    loop.append(loop)
    return loop


def _times10(a):
    return compute_this(address=a)(lambda x: x * 10)


def _guarded_endless():
    # Endless, but stops the test (instead of eating memory) if read too far.
    for n in itertools.count():
        if n > 100_000:
            raise RuntimeError("read 100,000 items of an endless input: not bounded")
        yield n


def _map_bounded(a, iterable):
    with dask.config.set({"dc_jupyter.map.max-items": 1000}):
        return compute_this(address=a)(one).map(iterable)


def _with_config(settings: dict, thunk):
    with dask.config.set(settings):
        return thunk()


@functools.cache
def _silent_port() -> int:
    """A port that accepts connections (the kernel's backlog) but never speaks."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    _silent_port.listener = listener  # kept open for the session
    return listener.getsockname()[1]


@functools.cache
def _dashboard(a: str) -> str:
    """The session scheduler's dashboard (HTTP) port, written as a Dask address."""
    from distributed import Client

    with Client(a, set_as_default=False, timeout="30s") as client:
        port = client.scheduler_info()["services"]["dashboard"]
    return f"tcp://127.0.0.1:{port}"


def _connect_while_others_work(a):
    """A hanging connect must not hold up close() or work on another cluster."""
    failure: list = []

    def connect_silent():
        try:
            dc_jupyter.connect(f"tcp://127.0.0.1:{_silent_port()}", timeout=4)
        except Exception as exc:
            failure.append(exc)

    thread = threading.Thread(target=connect_silent)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    dc_jupyter.close()  # what interpreter exit runs (atexit)
    assert compute_this(address=a)(one)(5).compute(timeout=30) == 5
    assert thread.is_alive(), "the connect was expected to still be waiting"
    assert time.monotonic() - started < 3, "close()/other work waited for the connect"
    thread.join()
    raise failure[0]


@functools.cache
def _client_certificates() -> dict:
    from test_tls import _make_cert, _write

    folder = Path(tempfile.mkdtemp(prefix="dc-jupyter-certs-"))
    ca = _make_cert("dc-jupyter test CA")
    key, cert = _make_cert("notebook", issuer=ca)
    return {
        "distributed.comm.tls.ca-file": _write(folder / "ca.pem", cert=ca[1]),
        "distributed.comm.tls.client.cert": _write(folder / "c.pem", cert=cert),
        "distributed.comm.tls.client.key": _write(folder / "c.key", key=key),
        "distributed.comm.require-encryption": True,
    }


def _tls_to_plaintext(a):
    """Good certificates, plaintext scheduler: the handshake fails one of two ways
    at random, so try several times; every one must be the same clear error."""
    address = a.replace("tcp://", "tls://")
    errors = []
    with dask.config.set(_client_certificates()):
        for _ in range(6):
            try:
                dc_jupyter.connect(address, timeout=5)
            except Exception as exc:
                errors.append(exc)
    kinds = {(type(e), str(e).split(" (")[0]) for e in errors}
    assert len(errors) == 6 and len(kinds) == 1, kinds
    raise errors[0]


@functools.cache
def _shell():
    shell = ipython_shell()
    shell.run_line_magic("load_ext", "dc_jupyter")
    return shell


def _cell(line: str, cell: str = "y = 1"):
    return _shell().run_cell_magic("distribute", line, cell)


def _async_cell_timeout(a):
    """``--async --timeout 1``: the cell is cancelled after 1 s, nobody waiting."""
    shell = _shell()
    shell.user_ns.pop("slept", None)
    with capture_output() as captured:
        _cell(
            f"--async --timeout 1 -o handle --scheduler {a}",
            "import time\nfor _ in range(300):\n    time.sleep(0.1)\nslept = 1",
        )
        handle = shell.user_ns["handle"]
        wait_until(handle.done, timeout=10)
        wait_until(lambda: "did not finish" in captured.stderr, timeout=5)
    return handle.status, "slept" in shell.user_ns, "did not finish within 1 s" in captured.stderr


# (id, thunk(address) that must raise, exception type, regex the message must match)
CASES = [
    # -- arguments that do not fit the signature
    (
        "too-many-args",
        lambda a: compute_this(address=a)(plain)(1, 2, 3),
        TypeError,
        "takes from 1 to 2 positional arguments but 3",
    ),
    (
        "missing-arg",
        lambda a: compute_this(address=a)(plain)(),
        TypeError,
        "missing 1 required positional argument: 'a'",
    ),
    (
        "unexpected-kwarg",
        lambda a: compute_this(address=a)(plain)(1, d=4),
        TypeError,
        "unexpected keyword argument 'd'",
    ),
    (
        "duplicate-arg",
        lambda a: compute_this(address=a)(plain)(1, a=1),
        TypeError,
        "multiple values for argument 'a'",
    ),
    (
        "kw-only-as-positional",
        lambda a: compute_this(address=a)(lambda *, k: k)(1),
        TypeError,
        "takes 0 positional arguments",
    ),
    (
        "positional-only-as-kw",
        lambda a: compute_this(address=a)(lambda p, /: p)(p=1),
        TypeError,
        "positional-only",
    ),
    # -- arguments that cannot travel
    (
        "lock-argument",
        lambda a: compute_this(address=a)(one)(threading.Lock()).compute(),
        SerializationError,
        r"argument 'x' of one\(\): a _thread.lock cannot be pickled",
    ),
    (
        "generator-argument",
        lambda a: compute_this(address=a)(one)(i for i in range(3)).compute(),
        SerializationError,
        "argument 'x'.*generator cannot be pickled",
    ),
    (
        "huge-nested-argument",
        lambda a: compute_this(address=a)(one)(_deep(100_000)).compute(),
        SerializationError,
        r"arguments of one\(\): they are nested too deeply.*Nothing was sent",
    ),
    (
        "lock-in-kwargs",
        lambda a: compute_this(address=a)(lambda **kw: 1)(z=threading.Lock()).compute(),
        SerializationError,
        "_thread.lock",
    ),
    (
        "lock-inside-list",
        lambda a: compute_this(address=a)(one)([1, [threading.Lock()]]).compute(),
        SerializationError,
        "argument 'x'.*list cannot be pickled",
    ),
    (
        "unpicklable-closure",
        lambda a: compute_this(address=a)((lambda lk: lambda: lk)(threading.Lock()))().compute(),
        SerializationError,
        "the function .*cannot be pickled",
    ),
    # -- decorator options
    (
        "retries-negative",
        lambda a: compute_this(retries=-1),
        ValueError,
        "retries must be a whole number >= 0, not -1",
    ),
    (
        "retries-float",
        lambda a: compute_this(retries=1.5),
        ValueError,
        "retries must be a whole number >= 0, not 1.5",
    ),
    (
        "retries-bool",
        lambda a: compute_this(retries=True),
        ValueError,
        "retries must be a whole number",
    ),
    (
        "retries-string",
        lambda a: compute_this(retries="2"),
        ValueError,
        "retries must be a whole number >= 0, not '2'",
    ),
    (
        "unknown-option",
        lambda a: compute_this(retry=2),
        TypeError,
        "unexpected keyword argument 'retry'",
    ),
    (
        "decorate-non-callable",
        lambda a: compute_this(42),
        TypeError,
        "decorates a function, not 42",
    ),
    (
        "client-not-a-client",
        lambda a: compute_this(client="tcp://x:1"),
        TypeError,
        "client= takes a distributed.Client, not 'tcp://x:1'",
    ),
    (
        "cluster-not-a-cluster",
        lambda a: compute_this(cluster=object()),
        TypeError,
        "cluster= takes a Dask cluster object",
    ),
    # -- resources
    (
        "resources-not-mapping",
        lambda a: compute_this(resources=["GPU"]),
        TypeError,
        r"resources must be a mapping like \{'GPU': 1\}",
    ),
    (
        "resources-zero",
        lambda a: compute_this(resources={"GPU": 0}),
        ValueError,
        "resource 'GPU' needs a positive number, not 0",
    ),
    (
        "resources-negative",
        lambda a: compute_this(resources={"GPU": -1}),
        ValueError,
        "resource 'GPU' needs a positive number",
    ),
    (
        "resources-string-amount",
        lambda a: compute_this(resources={"GPU": "1"}),
        ValueError,
        "resource 'GPU' needs a positive number, not '1'",
    ),
    (
        "resources-empty-name",
        lambda a: compute_this(resources={"": 1}),
        ValueError,
        "resource names must be non-empty strings",
    ),
    (
        "resources-nobody-has",
        lambda a: compute_this(address=a, resources={"GPU": 1})(one)(1).compute(),
        ValueError,
        r"needs resources \{'GPU': 1\}.*no worker.*nothing was sent.*--resources GPU=1",
    ),
    (
        "resources-map-nobody-has",
        lambda a: compute_this(address=a, resources={"TPU": 2})(one).map([1, 2]).compute(),
        ValueError,
        "needs resources .*TPU.*wait forever",
    ),
    # -- timeouts
    (
        "timeout-word",
        lambda a: compute_this(timeout="soon"),
        ValueError,
        "timeout must be a number of seconds or a time string like '10s', not 'soon'",
    ),
    (
        "timeout-zero",
        lambda a: compute_this(timeout=0),
        ValueError,
        "timeout must be a positive number of seconds, not 0",
    ),
    (
        "timeout-negative",
        lambda a: compute_this(timeout=-5),
        ValueError,
        "timeout must be a positive number",
    ),
    (
        "compute-timeout-negative",
        lambda a: compute_this(address=a)(one)(1).compute(timeout=-1),
        ValueError,
        "timeout must be a positive number of seconds, not -1",
    ),
    (
        "compute-timeout-word",
        lambda a: compute_this(address=a)(one)(1).compute(timeout="later"),
        ValueError,
        "not 'later'",
    ),
    (
        "map-timeout-zero",
        lambda a: compute_this(address=a)(one).map([1]).compute(timeout=0),
        ValueError,
        "timeout must be a positive number",
    ),
    # -- map inputs
    (
        "map-no-iterable",
        lambda a: compute_this(address=a)(one).map(),
        TypeError,
        r"one.map\(\) needs at least one iterable",
    ),
    (
        "map-not-iterable",
        lambda a: compute_this(address=a)(one).map(5),
        TypeError,
        r"one.map\(\) argument 1 must be iterable, not int",
    ),
    (
        "map-second-not-iterable",
        lambda a: compute_this(address=a)(plain).map([1], None),
        TypeError,
        "argument 2 must be iterable, not NoneType",
    ),
    (
        "map-bad-item-arity",
        lambda a: compute_this(address=a)(one).map([1, 2], [3, 4]),
        TypeError,
        r"item 0 \(1, 3\).*takes 1 positional argument but 2",
    ),
    (
        "map-unpicklable-item",
        lambda a: compute_this(address=a)(one).map([1, threading.Lock()]).compute(),
        SerializationError,
        r"item 1: .*_thread.lock",
    ),
    (
        "map-iterable-raises",
        lambda a: compute_this(address=a)(one).map(_raising_iterable()),
        ValueError,
        "the input ran dry",
    ),
    # -- addresses and connect()
    (
        "address-not-string",
        lambda a: compute_this(address=8786),
        TypeError,
        "address must be a string like 'tcp://host:8786', not 8786",
    ),
    (
        "address-empty",
        lambda a: compute_this(address="")(one)(1).compute(),
        ValueError,
        "scheduler address is a string like 'tcp://10.0.0.5:8786', not ''",
    ),
    (
        "address-unreachable",
        lambda a: compute_this(address=DEAD)(one)(1).compute(),
        SchedulerUnreachableError,
        "Could not reach the Dask scheduler at 'tcp://127.0.0.1:9' within 1 s",
    ),
    (
        "address-bad-scheme",
        lambda a: compute_this(address="foo://127.0.0.1:1")(one)(1).compute(),
        ValueError,
        "unknown address scheme 'foo'",
    ),
    (
        "address-bad-port",
        lambda a: compute_this(address="tcp://127.0.0.1:notaport")(one)(1).compute(),
        ValueError,
        "notaport",
    ),
    (
        "connect-nothing",
        lambda a: dc_jupyter.connect(),
        ValueError,
        "connect\\(\\) takes a scheduler address or scheduler_file=, exactly one",
    ),
    (
        "connect-both",
        lambda a: dc_jupyter.connect(a, scheduler_file="x.json"),
        ValueError,
        "exactly one",
    ),
    (
        "connect-missing-file",
        lambda a: dc_jupyter.connect(scheduler_file="/nonexistent/s.json"),
        FileNotFoundError,
        "No scheduler file at '/nonexistent/s.json'",
    ),
    (
        "connect-unreachable",
        lambda a: dc_jupyter.connect(DEAD),
        SchedulerUnreachableError,
        "tcp://127.0.0.1:9",
    ),
    (
        "connect-timeout-bad",
        lambda a: dc_jupyter.connect(a, timeout="never"),
        ValueError,
        "connect timeout must be a number of seconds",
    ),
    (
        "start-local-zero",
        lambda a: dc_jupyter.start_local(0),
        ValueError,
        "n_workers must be a whole number >= 1, not 0",
    ),
    ("start-local-string", lambda a: dc_jupyter.start_local("2"), ValueError, "not '2'"),
    # -- backends
    (
        "backend-unknown-name",
        lambda a: compute_this(backend="spark")(one)(1).compute(),
        ValueError,
        "Unknown backend 'spark': use 'dask', 'local'",
    ),
    (
        "backend-wrong-type",
        lambda a: compute_this(backend=42)(one)(1).compute(),
        ValueError,
        "Unknown backend 42",
    ),
    (
        "backend-shut-executor",
        lambda a: compute_this(backend=_shut_pool())(one)(1).compute(),
        RuntimeError,
        "after shutdown",
    ),
    # -- second corpus (issue 18): a wrong answer, hangs, memory, odd objects
    (
        "permissive-proxy-argument",
        # In one list with jobs: the worker walks that list to fill in their results.
        lambda a: compute_this(address=a)(
            lambda xs: [x if type(x) is int else "proxy" for x in xs]
        )([_times10(a)(1), _times10(a)(2), Permissive()]).compute(),
        Returns([10, 20, "proxy"]),
        None,
    ),
    (
        "connect-dashboard-port",
        lambda a: dc_jupyter.connect(_dashboard(a), timeout=5),
        SchedulerUnreachableError,
        r"tcp://127.0.0.1:\d+' accepted the connection but did not answer as a Dask scheduler "
        "within 5 s.*dashboard",
        30,  # a Client to find the port + the 5 s timeout; it hung > 120 s
    ),
    (
        "connect-silent-port",
        lambda a: dc_jupyter.connect(f"tcp://127.0.0.1:{_silent_port()}", timeout=2),
        SchedulerUnreachableError,
        "did not answer as a Dask scheduler within 2 s",
        10,
    ),
    (
        "connect-silent-port-no-scheme",  # Dask reads 'host:port' as tcp://host:port
        lambda a: dc_jupyter.connect(f"127.0.0.1:{_silent_port()}", timeout=2),
        SchedulerUnreachableError,
        "did not answer as a Dask scheduler within 2 s",
        10,
    ),
    (
        "connect-plaintext-while-encryption-required",
        lambda a: _with_config(
            {"distributed.comm.require-encryption": True}, lambda: dc_jupyter.connect(a)
        ),
        SchedulerUnreachableError,
        r"require encryption .* not a tls:// address",
        10,
    ),
    (
        "connect-hang-blocks-nothing-else",
        _connect_while_others_work,
        SchedulerUnreachableError,
        "did not answer as a Dask scheduler within 4 s",
        15,
    ),
    (
        "resources-nan",
        lambda a: compute_this(resources={"GPU": float("nan")}),
        ValueError,
        "resource 'GPU' needs a positive number, not nan",
    ),
    (
        "resources-inf",
        lambda a: compute_this(resources={"GPU": float("inf")}),
        ValueError,
        "resource 'GPU' needs a positive number, not inf",
    ),
    (
        "magic-resources-nan",
        lambda a: _cell(f"--resources GPU=nan --scheduler {a}"),
        UsageError,
        "resource 'GPU' needs a positive number, not nan",
        20,
    ),
    (
        "map-endless",
        lambda a: compute_this(address=a)(one).map(itertools.count()),
        ValueError,
        r"one.map\(\): the input has more than 1,000,000 items.*endless.*Nothing was sent.*"
        "dc_jupyter.map.max-items",
        60,
    ),
    (
        "map-endless-read-lazily",
        lambda a: _map_bounded(a, _guarded_endless()),
        ValueError,
        "more than 1,000 items",
        20,
    ),
    (
        "magic-map-endless",
        lambda a: _cell(f"--scheduler {a} --map x in __import__('itertools').count()"),
        UsageError,
        r"--map x in __import__\('itertools'\).count\(\): the input has more than 1,000,000",
        60,
    ),
    (
        "magic-async-timeout",
        _async_cell_timeout,
        Returns(("cancelled", False, True)),
        None,
        15,  # the cell would take 30 s
    ),
    (
        "magic-out-get_ipython",
        lambda a: _cell(f"-o get_ipython --scheduler {a}"),
        UsageError,
        "-o/--out get_ipython: that name belongs to Python or IPython itself",
    ),
    (
        "magic-out-dunder",
        lambda a: _cell(f"-o __builtins__ --scheduler {a}"),
        UsageError,
        "-o/--out __builtins__: that name belongs to Python or IPython itself",
    ),
    (
        "magic-out-shell-cache",
        lambda a: _cell(f"-o _i3 --scheduler {a}"),
        UsageError,
        "belongs to Python or IPython itself",
    ),
    (
        "magic-out-keyword",
        lambda a: _cell(f"-o class --scheduler {a}"),
        UsageError,
        "-o/--out takes a variable name, not 'class'",
    ),
    (
        "magic-option-after-map",
        lambda a: _cell(f"--map x in range(3) --scheduler {a}", "x * 2"),
        Returns([0, 2, 4]),
        None,
    ),
    (
        "magic-unbalanced-quote",
        lambda a: _cell(f'--pull "y --scheduler {a}'),
        UsageError,
        "(?s)No closing quotation.*usage: %%distribute",
    ),
    (
        "job-in-namedtuple",
        lambda a: compute_this(address=a)(lambda p: p.a + p.b)(Pair(_times10(a)(1), 2)).compute(),
        Returns(12),
        None,
    ),
    (
        "job-in-set",
        lambda a: compute_this(address=a)(sorted)({_times10(a)(1), _times10(a)(2)}).compute(),
        Returns([10, 20]),
        None,
    ),
    (
        "job-as-dict-key",
        lambda a: compute_this(address=a)(one)({_times10(a)(1): "v"}).compute(),
        SerializationError,
        "A job cannot be a dict key.*Nothing was sent",
    ),
    (
        "job-inside-other-object",
        lambda a: compute_this(address=a)(one)(collections.deque([_times10(a)(1)])).compute(),
        SerializationError,
        r"argument 'x' of one\(\).*deque.*not inside other objects",
    ),
    (
        "self-referencing-list",
        lambda a: compute_this(address=a)(lambda x: x[0] is x)(_loop()).compute(),
        Returns(True),
        None,
    ),
    (
        "self-referencing-list-with-job",
        lambda a: compute_this(address=a)(lambda x, y: (x[0] is x, y))(
            _loop(), _times10(a)(1)
        ).compute(),
        Returns((True, 10)),
        None,
    ),
    (
        "map-self-referencing-list",
        lambda a: compute_this(address=a)(lambda x: x[0] is x).map([_loop(), _loop()]).compute(),
        Returns([True, True]),
        None,
    ),
    (
        "broken-sizeof-and-repr",
        lambda a: compute_this(address=a)(lambda x: type(x).__name__)(Broken()).compute(),
        Returns("Broken"),
        None,
    ),
    (
        "broken-repr-preview",
        lambda a: repr(compute_this(address=a)(one)(Broken())),
        Returns("<Job one(<Broken object>) not sent>"),
        None,
    ),
    (
        "broken-repr-in-map-error",
        lambda a: compute_this(address=a)(one).map([Broken()], [1]),
        TypeError,
        r"item 0 <tuple>: .*takes 1 positional argument but 2",
    ),
    (
        "timeout-huge",
        lambda a: compute_this(address=a, timeout=1e308)(one)(1).compute(),
        Returns(1),
        None,
    ),
    (
        "compute-timeout-huge",
        lambda a: compute_this(address=a)(one).map([1]).compute(timeout=float("inf")),
        Returns([1]),
        None,
    ),
    (
        "connect-timeout-huge",
        lambda a: dc_jupyter.connect(a, timeout=1e308).scheduler.address == a,
        Returns(True),
        None,
    ),
    (
        "timeout-nan",
        lambda a: compute_this(timeout=float("nan")),
        ValueError,
        "timeout must be a positive number of seconds, not nan",
    ),
    (
        "compute-timeout-nan",
        lambda a: compute_this(address=a)(one)(1).compute(timeout=float("nan")),
        ValueError,
        "timeout must be a positive number of seconds, not nan",
    ),
    (
        "magic-timeout-nan",
        lambda a: _cell(f"--timeout nan --scheduler {a}"),
        UsageError,
        "timeout must be a positive number of seconds, not nan",
    ),
    (
        "tls-client-to-plaintext-scheduler",
        _tls_to_plaintext,
        SchedulerUnreachableError,
        r"Dask scheduler at 'tls://127.0.0.1:\d+'.*does not use TLS.*tcp:// address",
        60,
    ),
]


@pytest.fixture(scope="module")
def ok(cluster):
    return compute_this(address=cluster.address)(lambda x: x + 1)


def _params():
    # (id, thunk(address), exception type or Returns(value), message regex[, seconds bound])
    for name, thunk, expected, pattern, *bound in CASES:
        yield pytest.param(thunk, expected, pattern, bound[0] if bound else None, id=name)


@pytest.mark.parametrize("thunk, expected, pattern, within", list(_params()))
def test_bad_input_is_a_clear_error_and_leaves_nothing(
    cluster, client, ok, thunk, expected, pattern, within
):
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=10)
    _shell()  # started once, outside the time bounds
    started = time.monotonic()
    with dask.config.set({"dc_jupyter.connect-timeout": "1s"}):
        if isinstance(expected, Returns):
            assert thunk(cluster.address) == expected.value
        else:
            with pytest.raises(expected, match=pattern):
                thunk(cluster.address)
    took = time.monotonic() - started
    if within is not None:
        assert took < within, f"took {took:.1f} s, more than {within} s"
    # (Work that ran to completion is released a moment later; orphans stay.)
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=5), (
        "bad input left work on the cluster"
    )
    assert ok(1).compute(timeout=30) == 2  # and the next call works
    assert not [t.name for t in threading.enumerate() if t.name.startswith("dc_jupyter")]


def test_a_client_that_fails_to_start_is_closed_at_once():
    # Dask leaves a Client whose start failed half started, its IO loop running,
    # until the garbage collector closes it, in whichever thread collects it:
    # when that was the IO loop of the next client starting, that client's start
    # failed after 10 s with a bare AssertionError (CI, after this very input).
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(ValueError, match="unknown address scheme 'foo'") as raised:
        dc_jupyter.connect("foo://127.0.0.1:1")
    # (``raised`` keeps the failed client's frames alive: nothing collects it yet.)
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not left, f"a failed connect left {left} running ({raised.value!r})"
