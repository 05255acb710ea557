"""Find the Dask cluster to use, connect to it, and close what we started.

The cluster is the first of: one chosen explicitly (``connect()``,
``%distribute connect``, a ``client=``/``cluster=``/``address=`` option); Dask's
``scheduler-address`` setting (so ``DASK_SCHEDULER_ADDRESS`` works); a
``distributed.Client`` the session already made; else the embedded cluster
(``embedded.EmbeddedCluster``) started on first use and closed when the
interpreter exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import warnings
import weakref
from typing import Any

import dask.config

from dc_jupyter import config
from dc_jupyter.backends.dask import embedded
from dc_jupyter.backends.dask.versions import check_versions
from dc_jupyter.errors import SchedulerUnreachableError

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_explicit: Any = None  # the Client chosen with connect()/start_local()
_explicit_target: dict[str, Any] | None = None  # how connect() reached it, to reconnect
_by_address: dict[str, Any] = {}  # clients we opened, by scheduler address
_local_cluster: Any = None
_local_client: Any = None
_checked: weakref.WeakSet = weakref.WeakSet()  # clients whose versions were checked


def _connect_timeout(timeout: float | str | None) -> float:
    if timeout is None:
        timeout = config.get("connect-timeout", "10s")
    return config.seconds(timeout, "connect timeout")  # type: ignore[return-value]


def _open_client(target: Any, timeout: float | str | None = None, **kwargs: Any) -> Any:
    """A new ``distributed.Client``; an unreachable scheduler is a clear error."""
    from distributed.versions import VersionMismatchWarning

    seconds = _connect_timeout(timeout)
    where = target if isinstance(target, str) else _address_in_file(kwargs, target)
    try:
        probe_at = _probe_address(where)
        if probe_at is not None:
            _probe(probe_at, seconds)
        with warnings.catch_warnings():
            if config.get("check-versions", True):
                # ensure_compatible() raises a clearer error for the same finding.
                warnings.simplefilter("ignore", VersionMismatchWarning)
            client = new_client(target, timeout=f"{seconds}s", set_as_default=False, **kwargs)
    except _SilentPeer as exc:
        raise SchedulerUnreachableError(
            f"Something at {where!r} accepted the connection but did not answer as a Dask "
            f"scheduler within {seconds:g} s. Is it the dashboard's port, or another "
            "service? Use the scheduler's own address (`dask scheduler` prints it; the "
            "default port is 8786, the dashboard's is 8787)."
        ) from exc
    except RuntimeError as exc:
        if "encryption required" not in str(exc):
            raise
        raise SchedulerUnreachableError(
            f"This client is set to require encryption (dask config "
            f"'distributed.comm.require-encryption'), and {where!r} is not a tls:// address. "
            "Use the scheduler's tls:// address with its certificates, or unset that setting "
            "for a plaintext cluster."
        ) from exc
    except (OSError, TimeoutError, TypeError, ValueError) as exc:
        tls_problem = _tls_problem(where, exc)
        if isinstance(exc, ValueError) and tls_problem is not _NOT_TLS:
            raise
        if isinstance(exc, TypeError) and tls_problem is None:
            raise
        if tls_problem is _NOT_TLS:
            raise SchedulerUnreachableError(
                f"Could not talk to the Dask scheduler at {where!r}: {tls_problem} "
                f"({type(exc).__name__}: {exc})."
            ) from exc
        if tls_problem is not None:
            raise SchedulerUnreachableError(
                f"The Dask scheduler at {where!r} refused this client: {tls_problem} "
                f"({type(exc).__name__}: {exc}). It uses TLS with certificates: set "
                "dask.config 'distributed.comm.tls.ca-file', "
                "'distributed.comm.tls.client.cert' and 'distributed.comm.tls.client.key' "
                "to files the cluster trusts, or pass "
                "client=Client(address, security=Security(...))."
            ) from exc
        raise SchedulerUnreachableError(
            f"Could not reach the Dask scheduler at {where!r} within {seconds:g} s "
            f"({type(exc).__name__}: {exc}). Check that `dask scheduler` runs there and "
            "that the address is right (a scheduler started with TLS needs its tls:// "
            "address and certificates); set dc_jupyter.connect-timeout to wait longer, or "
            "unset DASK_SCHEDULER_ADDRESS to use the embedded local cluster."
        ) from exc
    return tune_for_interactive_use(client)


def new_client(*args: Any, **kwargs: Any) -> Any:
    """``distributed.Client(*args, **kwargs)``; one whose start fails is closed here.

    Dask leaves such a client half started (its IO loop thread running) for the
    garbage collector, whose finalizer closes it in whichever thread happens to
    collect it, taking Dask's one lock for starting and stopping IO loops. When
    that thread is the IO loop of the next client being started (which holds
    that lock), both wait, and Dask gives up after 10 s with a bare
    ``AssertionError``: a connect to ``foo://...`` made a later good one fail.
    """
    from distributed import Client

    try:
        return Client(*args, **kwargs)
    except BaseException as exc:
        # The half-started client is only reachable as ``self`` in its own frames.
        tb = exc.__traceback__
        while tb is not None:
            half_started = tb.tb_frame.f_locals.get("self")
            if isinstance(half_started, Client):
                _close_quietly(half_started)
                break
            tb = tb.tb_next
        raise


def _probe_address(where: Any) -> str | None:
    """``where`` as the tcp:// or tls:// address Dask will dial (``host:port`` has
    Dask's default scheme), or None when it is not one (inproc, a cluster object)."""
    if not isinstance(where, str):
        return None
    from distributed.comm.addressing import parse_address

    try:
        scheme, location = parse_address(where)
    except ValueError:
        return None  # Client() names what is wrong with it
    return f"{scheme}://{location}" if scheme in ("tcp", "tls") else None


class _SilentPeer(TimeoutError):
    """Something accepted the TCP connection but never answered Dask's handshake."""


def _probe(address: str, seconds: float) -> None:
    """Open and close one Dask comm to ``address``, handshake included, within ``seconds``.

    ``distributed.Client`` waits for the scheduler's handshake without a timeout:
    pointed at a port that accepts connections but never answers (a dashboard,
    another service) it hung for minutes, whatever its ``timeout``. This
    bounded check runs first, in a thread of its own (the caller may be inside
    a running event loop, as in a Jupyter kernel).
    """
    import asyncio

    from distributed.comm import connect as comm_connect
    from distributed.security import Security

    args = Security().get_connection_args("client")
    outcome: list[BaseException | None] = []

    async def handshake() -> None:
        comm = await comm_connect(address, timeout=seconds, **args)
        await comm.close()

    async def bounded() -> None:
        try:
            # A little past the connect's own timeout, so that a port where
            # nothing listens fails as unreachable (an OSError) first.
            await asyncio.wait_for(handshake(), seconds + 0.5)
        except asyncio.TimeoutError:
            raise _SilentPeer(f"no Dask handshake from {address} within {seconds:g} s") from None

    def run() -> None:
        try:
            asyncio.run(bounded())
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="dc_jupyter-connect-probe", daemon=True)
    thread.start()
    thread.join(seconds + 5)
    if not outcome:
        raise _SilentPeer(f"no Dask handshake from {address} within {seconds:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def tune_for_interactive_use(client: Any) -> Any:
    """Shorten how long ``client`` holds messages before sending them to the scheduler.

    Dask's client batches its messages for 10 ms (a fixed ``BatchedSend``
    interval in ``Client._ensure_connected``), which is most of a round trip.
    Applied only to clients dc_jupyter opens itself; a reconnect restores
    Dask's default.
    """
    comm = getattr(client, "scheduler_comm", None)
    interval = config.seconds(config.get("client-batch-interval", "1ms"), "client-batch-interval")
    if comm is not None and interval is not None and hasattr(comm, "interval"):
        comm.interval = interval
    return client


def _address_in_file(kwargs: dict, target: Any) -> Any:
    path = kwargs.get("scheduler_file")
    if path is None:
        return target
    try:
        with open(path) as f:
            return json.load(f).get("address", path)
    except (OSError, ValueError):
        return path


_NOT_TLS = (
    "this client speaks TLS, but the scheduler there answered in plain text: it does not "
    "use TLS. Use its tcp:// address (and no certificates), or start it with TLS"
)


def _tls_problem(address: Any, exc: BaseException) -> str | None:
    """Why a TLS handshake failed, in words, or None if ``exc`` is not about TLS."""
    text = f"{exc} {exc.__cause__ or exc.__context__ or ''}"
    if "WRONG_VERSION_NUMBER" in text or "IOStream is not idle" in text:
        # A TLS client meeting a plaintext scheduler: OpenSSL reads its first bytes as
        # a bad record, or (in about 1 run of 2) Tornado finds the scheduler's first
        # message already in the stream it was about to wrap in TLS.
        return _NOT_TLS
    if "ssl_context" in text:
        return "this client has no TLS certificates configured"
    if isinstance(address, str) and address.startswith("tls://") or "SSL" in text:
        return "the TLS handshake failed (missing, untrusted or wrong certificates)"
    return None


def _usable(client: Any) -> bool:
    # "connecting" after start-up means the scheduler went away and the client
    # is retrying in the background: work sent now would wait on a scheduler
    # that may never come back, so open a fresh client (which fails, naming
    # the address, within the connect timeout, or works if it is back).
    return client is not None and getattr(client, "status", None) == "running"


def client_for_address(address: str, timeout: float | str | None = None) -> Any:
    """A client for ``address``, reused while it stays connected."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(
            f"A scheduler address is a string like 'tcp://10.0.0.5:8786', not {address!r}"
        )
    _check_host_port(address)
    with _lock:
        client = _by_address.get(address)
        if _usable(client):
            return client
        stale = _by_address.pop(address, None)
    if stale is not None:
        _close_quietly(stale)
    # Outside the lock: connecting can take the whole timeout, and close() (also
    # at interpreter exit) and every other call must not wait for it.
    client = _open_client(address, timeout)
    with _lock:
        other = _by_address.get(address)
        if not _usable(other):  # (else another thread connected meanwhile: use that)
            _by_address[address], other = client, None
    if other is not None:
        _close_quietly(client)
        return other
    return client


def _check_host_port(address: str) -> None:
    """Refuse a malformed tcp/tls address here, before Dask starts a client for it."""
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme in ("tcp", "tls"):
        try:
            parse_host_port(location)
        except ValueError as exc:
            raise ValueError(
                f"{address!r} is not a scheduler address: {exc}. Use 'tcp://HOST:PORT', "
                "e.g. 'tcp://10.0.0.5:8786'."
            ) from None


def connect(
    address: str | None = None,
    *,
    scheduler_file: str | None = None,
    timeout: float | str | None = None,
) -> Any:
    """Send all later work to the scheduler at ``address`` (or in ``scheduler_file``)."""
    global _explicit, _explicit_target
    if (address is None) == (scheduler_file is None):
        raise ValueError("connect() takes a scheduler address or scheduler_file=, exactly one")
    if scheduler_file is not None:
        if not os.path.exists(scheduler_file):
            raise FileNotFoundError(
                f"No scheduler file at {scheduler_file!r}; start the scheduler with "
                "`dask scheduler --scheduler-file FILE` and pass that FILE."
            )
        client = _open_client(None, timeout, scheduler_file=scheduler_file)
        _by_address[client.scheduler.address] = client
    else:
        client = client_for_address(address, timeout)
    ensure_compatible(client)
    with _lock:
        _explicit = client
        _explicit_target = {"address": address, "scheduler_file": scheduler_file}
    return client


def _reconnect_explicit(target: dict[str, Any]) -> Any:
    """The client connect() chose, reopened if its scheduler went away and came back."""
    global _explicit
    if target.get("scheduler_file"):
        client = _open_client(None, scheduler_file=target["scheduler_file"])
        _by_address[client.scheduler.address] = client
    else:
        client = client_for_address(target["address"])
    with _lock:
        if _explicit_target is target:  # not changed (close(), connect()) meanwhile
            _explicit = client
    return client


def start_local(n_workers: int | None = None) -> Any:
    """(Re)start the embedded local cluster with ``n_workers`` and use it from now on."""
    global _explicit, _explicit_target
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        raise ValueError(f"n_workers must be a whole number >= 1, not {n_workers!r}")
    with _lock:
        _close_local()
        _explicit_target = None
        _explicit = _embedded_client(n_workers)
        return _explicit


def close() -> None:
    """Forget the chosen cluster and close every client and cluster dc_jupyter opened."""
    global _explicit, _explicit_target
    with _lock:
        _explicit = _explicit_target = None
        for client in list(_by_address.values()):
            _close_quietly(client)
        _by_address.clear()
        _close_local()


def forget(address: str) -> None:
    """Close the client dc_jupyter opened for ``address`` (its scheduler is going away)."""
    global _explicit, _explicit_target
    with _lock:
        client = _by_address.pop(address, None)
        if client is None:
            return
        if client is _explicit:
            _explicit = _explicit_target = None
        _close_quietly(client)


def current_client(client: Any = None, cluster: Any = None, address: str | None = None) -> Any:
    """The ``distributed.Client`` that work goes to now (see module docstring)."""
    if client is not None:
        chosen = client
    elif cluster is not None:
        chosen = _client_for_cluster(cluster)
    elif address is not None:
        chosen = client_for_address(address)
    else:
        chosen = _discover()
    ensure_compatible(chosen)
    return chosen


def _discover() -> Any:
    # Connecting to an address happens outside the lock (see client_for_address).
    with _lock:
        if _usable(_explicit):
            return _explicit
        target = _explicit_target
    if target is not None:
        return _reconnect_explicit(target)
    address = dask.config.get("scheduler-address", None)
    if address:
        return client_for_address(address)
    try:
        from distributed import default_client

        return default_client()
    except ValueError:
        pass
    with _lock:
        if _usable(_local_client):
            return _local_client
        return _embedded_client(None)


def _client_for_cluster(cluster: Any) -> Any:
    address = getattr(cluster, "scheduler_address", None)
    if not address:
        raise TypeError(
            f"cluster= takes a Dask cluster object (e.g. LocalCluster), not {cluster!r}"
        )
    with _lock:
        client = _by_address.get(address)
        if _usable(client):
            return client
    # Outside the lock, as in client_for_address: close() and other calls never
    # wait for a connect.
    client = tune_for_interactive_use(new_client(cluster, set_as_default=False))
    with _lock:
        other = _by_address.get(address)
        if not _usable(other):
            _by_address[address], other = client, None
    if other is not None:
        _close_quietly(client)
        return other
    return client


def _embedded_client(n_workers: int | None) -> Any:
    """Start the embedded cluster (see ``embedded``) and a client for it.

    The client becomes Dask's default when there is none yet, so Dask's own
    tools (``distributed.progress``, ``get_client()``, dask collections'
    ``.compute()``, dask-labextension) use the same cluster; a client the user
    made keeps its place.
    """
    global _local_cluster, _local_client

    if n_workers is None:
        n_workers = config.get("local.n-workers") or min(os.cpu_count() or 1, 4)

    start_timeout = config.seconds(config.get("local.start-timeout", "120s"), "local.start-timeout")

    def make_client(cluster: embedded.EmbeddedCluster) -> Any:
        seconds = max(_connect_timeout(None), start_timeout or 0)  # it is starting
        # direct_to_workers: results come straight from the worker (one hop, not
        # client -> scheduler -> worker and back); the workers are ours, on loopback.
        client = new_client(
            cluster,
            timeout=f"{seconds}s",
            set_as_default=not _has_default_client(),
            direct_to_workers=bool(config.get("local.direct-to-workers", True)),
        )
        return tune_for_interactive_use(client)

    _local_cluster, _local_client = embedded.start(
        n_workers,
        make_client,
        threads_per_worker=config.get("local.threads-per-worker", 1),
        host=config.get("local.host", "127.0.0.1"),
        dashboard_address=config.get("local.dashboard-address", "127.0.0.1:0"),
        cwd=os.getcwd(),
        batch_interval=_batch_interval(),
        timeout=start_timeout,
    )
    return _local_client


def _batch_interval() -> float | None:
    value = config.get("local.batch-interval", "1ms")
    return None if value is None else config.seconds(value, "local.batch-interval")


def _has_default_client() -> bool:
    from distributed import default_client

    try:
        default_client()
    except ValueError:
        return False
    return True


def embedded_logs(lines: int = 20) -> str:
    """The last lines of the embedded cluster's scheduler and worker logs."""
    with _lock:
        if _local_cluster is None:
            return (
                "dc_jupyter: no embedded cluster is running here, so there are no logs to show "
                "(an external cluster's logs are on its machines, or in its dashboard's "
                "Info page)."
            )
        return _local_cluster.logs(lines)


def ensure_compatible(client: Any) -> None:
    """Check versions once per client (see ``versions.check_versions``)."""
    if not config.get("check-versions", True) or client in _checked:
        return
    check_versions(client)
    _checked.add(client)


def identity(client: Any, fetch: bool = True) -> dict[str, Any]:
    """The scheduler's identity (id, services, workers) as Dask cached it: no round trip.

    The one use of the private ``Client._scheduler_identity`` (guarded by
    tests/test_units.py); ``client.scheduler_info()`` when it is missing and
    ``fetch``, else ``{}``.
    """
    cached = getattr(client, "_scheduler_identity", None)
    if cached or not fetch:
        return cached or {}
    return client.scheduler_info()


def scheduler_info(client: Any) -> dict[str, Any]:
    """``client.scheduler_info()`` listing every worker (newer Dask lists 5 by default)."""
    if _accepts_n_workers(client):
        return client.scheduler_info(n_workers=-1)
    return client.scheduler_info()


def describe(client: Any) -> dict[str, Any]:
    """Address, workers, threads, memory and dashboard link of ``client``'s cluster."""
    info = scheduler_info(client)
    workers = info.get("workers", {})
    return {
        "address": info.get("address") or client.scheduler.address,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
        "dashboard": client.dashboard_link,
        "embedded": client is _local_client,
    }


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def _close_quietly(client: Any) -> None:
    _checked.discard(client)
    try:
        client.close(timeout=2)
    except Exception:  # closing a broken connection must not hide the real error
        logger.debug("dc_jupyter: error while closing a client", exc_info=True)


def _close_local() -> None:
    global _local_cluster, _local_client
    if _local_client is not None:
        _close_quietly(_local_client)
    if _local_cluster is not None:
        try:
            _local_cluster.close()
        except Exception:
            logger.debug("dc_jupyter: error while closing the local cluster", exc_info=True)
    _local_cluster = _local_client = None


atexit.register(close)
