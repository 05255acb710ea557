"""A corpus of bad inputs across the function-level API.

Each must give a clear error that names the problem, leave nothing on the
(real) cluster, and not break the next call. (Magic options and cell captures
belong to `%%distribute` and are covered with it.)
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import cloudpickle
import dask
import distributed  # noqa: F401  (loads its config defaults before any dask.config.set)
import pytest
from conftest import scheduler_task_count, wait_until

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
]


@pytest.fixture(scope="module")
def ok(cluster):
    return compute_this(address=cluster.address)(lambda x: x + 1)


@pytest.mark.parametrize("thunk, kind, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_and_leaves_nothing(cluster, client, ok, thunk, kind, pattern):
    assert wait_until(lambda: scheduler_task_count(client) == 0, timeout=10)
    with dask.config.set({"dc_jupyter.connect-timeout": "1s"}):
        with pytest.raises(kind, match=pattern):
            thunk(cluster.address)
    assert scheduler_task_count(client) == 0, "bad input left work on the cluster"
    assert ok(1).compute(timeout=30) == 2  # and the next call works
    assert not [t.name for t in threading.enumerate() if t.name.startswith("dc_jupyter")]
