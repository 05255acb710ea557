"""``@compute_this``: turn a function into one whose calls are lazy cluster jobs."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import cloudpickle

from dc_jupyter import config
from dc_jupyter.core.job import Job
from dc_jupyter.core.map import MapJob
from dc_jupyter.core.signature import make_binder
from dc_jupyter.remote import inline as remote_inline
from dc_jupyter.remote import job as remote_job

# Workers don't have dc_jupyter: the inline stand-in travels by value.
cloudpickle.register_pickle_by_value(remote_inline)

if TYPE_CHECKING:
    from dc_jupyter.backends.base import Backend


@dataclass(frozen=True)
class JobOptions:
    """How and where a function's jobs run."""

    backend: Any = None
    retries: int = 0
    resources: Mapping[str, float] = field(default_factory=dict)
    timeout: float | None = None
    client: Any = None
    cluster: Any = None
    address: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {self.retries!r}")
        if not isinstance(self.resources, Mapping):
            raise TypeError(
                f"resources must be a mapping like {{'GPU': 1}}, not {self.resources!r}"
            )
        object.__setattr__(self, "resources", dict(self.resources))
        for name, amount in self.resources.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"resource names must be non-empty strings, not {name!r}")
            if (
                isinstance(amount, bool)
                or not isinstance(amount, (int, float))
                or not math.isfinite(amount)  # nan would wait forever, no worker has it
                or amount <= 0
            ):
                raise ValueError(
                    f"resource {name!r} needs a positive number, not {amount!r} "
                    "(e.g. resources={'GPU': 1})"
                )
        object.__setattr__(self, "timeout", config.seconds(self.timeout, "timeout"))
        if self.client is not None and not callable(getattr(self.client, "submit", None)):
            raise TypeError(f"client= takes a distributed.Client, not {self.client!r}")
        if self.cluster is not None and not getattr(self.cluster, "scheduler_address", None):
            raise TypeError(
                f"cluster= takes a Dask cluster object (e.g. LocalCluster), not {self.cluster!r}"
            )
        if self.address is not None and not isinstance(self.address, str):
            raise TypeError(
                f"address must be a string like 'tcp://host:8786', not {self.address!r}"
            )


#: token -> decorated function: what a decorated function pickled in a job turns
#: back into when it returns to this process (``remote.inline.restore``).
registry: weakref.WeakValueDictionary[str, RemoteFunction] = weakref.WeakValueDictionary()


class RemoteFunction:
    """A function whose calls return lazy ``Job`` objects instead of running.

    ``func(*args)`` checks the arguments and returns a ``Job``; ``func.map(...)``
    returns a ``MapJob``; ``func.local(*args)`` (or ``func.__wrapped__``) runs
    the plain function here and now.
    """

    def __init__(self, func: Callable, options: JobOptions) -> None:
        if not callable(func):
            raise TypeError(f"@compute_this decorates a function, not {func!r}")
        functools.update_wrapper(self, func)
        if not hasattr(self, "__name__"):  # a functools.partial, a callable object
            inner = getattr(func, "func", func)
            self.__name__ = getattr(inner, "__name__", None) or type(inner).__name__
            self.__qualname__ = getattr(inner, "__qualname__", self.__name__)
        self.options = options
        self._token = uuid.uuid4().hex
        registry[self._token] = self
        try:
            self._bind = make_binder(func, getattr(func, "__name__", None))
        except (TypeError, ValueError):
            # No inspectable signature (some builtins): let the call itself complain.
            self._bind = lambda *args, **kwargs: {"args": args, "kwargs": kwargs}
        self._backend: Backend | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Job:
        if remote_job.job_flag().get() and not remote_inline.sends_result(sys._getframe(1)):
            # Called by a job's code (local backend, this process): a plain call.
            return remote_inline.plain_call(self.__wrapped__, args, kwargs)
        bound = self._bind(*args, **kwargs)
        return Job(self, args, kwargs, bound)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Call the plain function in this process, without pickling or a cluster.

        As in a job, decorated functions it calls run as plain calls too (recursion).
        """
        with remote_job.inside_job():
            return self.__wrapped__(*args, **kwargs)

    def map(self, *iterables: Iterable) -> MapJob:
        """A lazy job that calls the function once per item, like the builtin ``map``.

        Every item is checked against the signature before anything is sent;
        ``.compute()`` returns the results as a list, in input order.
        """
        return MapJob(self, iterables)

    def backend(self, override: Any = None) -> Backend:
        """The backend this function's jobs run on (resolved on first use).

        ``override`` (a backend option, as for the decorator) is resolved
        afresh for one call: ``job.compute(backend="local")``.
        """
        from dc_jupyter.backends.base import resolve_backend

        if override is not None:
            return resolve_backend(dataclasses.replace(self.options, backend=override))
        if self._backend is None:
            self._backend = resolve_backend(self.options)
        return self._backend

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # Decorating a method: bind like a plain function would.
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    def __reduce__(self) -> Any:
        # Inside a job's payload (a helper, a method, a partial): workers have no
        # dc_jupyter, so it travels as the plain function; back here it is this object.
        spec = {
            "name": self.__name__,
            "retries": self.options.retries,
            "resources": dict(self.options.resources),
            "timeout": self.options.timeout,
        }
        return (remote_inline.restore, (self._token, self.__wrapped__, spec))

    def __repr__(self) -> str:
        return f"<compute_this {self.__qualname__}{self.__signature__}>"

    @property
    def __signature__(self):  # noqa: D401 - mirrors inspect's attribute
        import inspect

        return inspect.signature(self.__wrapped__)


@overload
def compute_this(func: Callable, /) -> RemoteFunction: ...


@overload
def compute_this(
    *,
    backend: Any = None,
    retries: int = 0,
    resources: Mapping[str, float] | None = None,
    timeout: float | str | None = None,
    client: Any = None,
    cluster: Any = None,
    address: str | None = None,
) -> Callable[[Callable], RemoteFunction]: ...


def compute_this(
    func: Callable | None = None,
    /,
    *,
    backend: Any = None,
    retries: int = 0,
    resources: Mapping[str, float] | None = None,
    timeout: float | str | None = None,
    client: Any = None,
    cluster: Any = None,
    address: str | None = None,
):
    """Make a function's calls run on a cluster: ``func(2).compute()``.

    Use bare (``@compute_this``) or called (``@compute_this(retries=2)``).

    Parameters
    ----------
    backend
        ``"dask"`` (default), ``"local"`` (in this process, through the same
        pickling), any ``concurrent.futures.Executor``, or a ``Backend``.
    retries
        How often a call that raised (or whose worker died) is run again; for
        ``map``, each failing item is run again on its worker.
    resources
        Worker resources each task needs, e.g. ``{"GPU": 1}``.
    timeout
        Seconds (or a string like ``"30s"``) before ``compute()`` gives up with
        ``TimeoutError`` and cancels the remote task.
    client, cluster, address
        Run on this ``distributed.Client``, Dask cluster object or scheduler
        address instead of the one found automatically.

    Examples
    --------
    >>> @compute_this()
    ... def func(x):
    ...     return x * x
    >>> func(2).compute()
    4
    """
    options = JobOptions(
        backend=backend,
        retries=retries,
        resources=resources if resources is not None else {},
        timeout=timeout,
        client=client,
        cluster=cluster,
        address=address,
    )
    if func is not None:
        return RemoteFunction(func, options)
    return lambda f: RemoteFunction(f, options)
