"""Lazy calls: a ``Job`` is one call of a decorated function, not yet sent.

``job.compute()`` (or ``job.run()``) sends it and waits; ``job.submit()``
sends it and returns a ``JobFuture``. A job given as an argument to another job
(also inside a list, tuple or dict) becomes a dependency that runs on the
cluster; its result never passes through the notebook.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING, Any

from dc_jupyter.config import seconds
from dc_jupyter.core import frozen, observe, pickling
from dc_jupyter.core.signature import labelled_arguments
from dc_jupyter.core.submit import submit_job
from dc_jupyter.errors import SerializationError
from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.core.function import RemoteFunction
    from dc_jupyter.core.futures import JobFuture


def _replace_jobs(obj: Any, deps: list[Job], active: set[int] | None = None) -> tuple[Any, bool]:
    """Swap jobs in ``obj`` for ``Dep`` placeholders: also inside lists, tuples,
    namedtuples, sets and dict values. Cycle-safe: a container that holds
    itself is left as it is (pickle keeps the loop)."""
    if isinstance(obj, Job):
        deps.append(obj)
        return remote_job.Dep(len(deps) - 1), True
    kind = type(obj)
    if kind not in (list, tuple, dict, set, frozenset) and not remote_job._is_namedtuple(obj):
        return obj, False
    active = set() if active is None else active
    if id(obj) in active:
        return obj, False
    active.add(id(obj))
    try:
        if kind is dict:
            if any(isinstance(key, Job) for key in obj):
                raise SerializationError(
                    "A job cannot be a dict key: its result is not known until it runs. "
                    "Use it as a dict value, or compute it first. Nothing was sent."
                )
            out, changed = {}, False
            for key, value in obj.items():
                out[key], hit = _replace_jobs(value, deps, active)
                changed |= hit
            return (out, True) if changed else (obj, False)
        items, changed = [], False
        for item in obj:
            new, hit = _replace_jobs(item, deps, active)
            items.append(new)
            changed |= hit
        if not changed:
            return obj, False
        return (kind(items) if kind in (list, tuple, set, frozenset) else kind._make(items)), True
    finally:
        active.discard(id(obj))


def contains_job(value: Any) -> bool:
    """Whether ``value`` is a job or holds one in a list, tuple or dict (the same walk)."""
    return _replace_jobs(value, [])[1]


def _set_aside_if_large(value: Any, deps: list[Any], limit: int) -> tuple[Any, bool]:
    """Swap a value larger than ``limit`` bytes for a placeholder to scatter."""
    if type(value) in (int, float, bool, type(None)):
        return value, False
    from dask.sizeof import sizeof

    try:
        size = sizeof(value)
    except Exception:  # a broken __sizeof__, a self-referencing list: send it inline
        return value, False
    if size <= limit:
        return value, False
    deps.append(remote_job.Scattered(value))
    return remote_job.Dep(len(deps) - 1), True


class Job:
    """One lazy call of a ``@compute_this`` function; nothing is sent until asked."""

    def __init__(self, function: RemoteFunction, args: tuple, kwargs: dict, bound: dict) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self._bound = bound
        self.key = f"{function.__name__}-{uuid.uuid4().hex}"
        #: Top-level modules the call refers to (filled by ``prepare``; a cell adds
        #: its imports): the backend ships or checks them before sending.
        self.modules: set[str] = set()

    @property
    def name(self) -> str:
        return self.function.__name__

    def prepare(self, scatter_above: int | None = None) -> tuple[bytes, list[Any]]:
        """Pickle the call with dependencies swapped for placeholders.

        Returns the payload for ``remote_job.run_job`` and the dependency jobs, whose
        result blobs must be passed to it in that order. With ``scatter_above``
        (bytes), arguments larger than that become ``remote_job.Scattered`` entries
        of the same list, for the backend to send outside the task graph.
        """
        deps: list[Any] = []
        args = list(self.args)
        kwargs = dict(self.kwargs)
        slots: list[int | str] = []
        try:
            for i, value in enumerate(args):
                args[i], hit = _replace_jobs(value, deps)
                if not hit and scatter_above is not None:
                    args[i], hit = _set_aside_if_large(value, deps, scatter_above)
                if hit:
                    slots.append(i)
            for key, value in kwargs.items():
                kwargs[key], hit = _replace_jobs(value, deps)
                if not hit and scatter_above is not None:
                    kwargs[key], hit = _set_aside_if_large(value, deps, scatter_above)
                if hit:
                    slots.append(key)
        except RecursionError:
            raise SerializationError(
                f"Cannot send the arguments of {self.name}(): they are nested too deeply to "
                "pickle (RecursionError). Nothing was sent. Flatten the data first."
            ) from None
        payload = pickling.dumps_call(
            self.function.__wrapped__,
            tuple(args),
            kwargs,
            tuple(slots),
            name=self.name,
            labelled=lambda: labelled_arguments(self._bound, self.function.__wrapped__),
            modules=self.modules,
        )
        return payload, deps

    def submit(self, backend: Any = None) -> JobFuture:
        """Send the job (its dependencies first) and return at once with a ``JobFuture``.

        ``backend`` (``"dask"``, ``"local"``, an ``Executor`` or a ``Backend``)
        runs this one call there instead of on the decorator's backend.
        """
        return submit_job(self, backend)

    def compute(self, timeout: float | None = None, backend: Any = None) -> Any:
        """Run the job where its backend runs work and return the result.

        ``timeout`` (seconds; default: the decorator's ``timeout``) raises
        ``TimeoutError`` and cancels the remote work when exceeded. ``backend``
        overrides the decorator's backend for this call (``backend="local"``
        runs it in this process).
        """
        __tracebackhide__ = True
        # Checked before anything is sent: a bad timeout must not leave work running.
        timeout = self.function.options.timeout if timeout is None else seconds(timeout, "timeout")
        handle = self.submit(backend)
        with observe.watching(handle):
            wait_or_cancel(handle, timeout)
            value = handle.result()
        # Nobody else holds this handle but the widget, which keeps it to draw
        # the final state: the cluster's copy of the result is not needed any more.
        handle.release_remote()
        return value

    run = compute

    def __reduce__(self) -> Any:
        # Only reached for a job somewhere _replace_jobs does not look (inside an
        # object, a deque, ...): say so here, instead of a ModuleNotFoundError on
        # a worker that has no dc_jupyter.
        raise TypeError(
            f"a job ({self.name}) can be an argument itself, or sit in a list, tuple, "
            "namedtuple, set or dict value; not inside other objects. Compute it first "
            "(job.compute()) and pass its result"
        )

    def __repr__(self) -> str:
        shown = [_short(a) for a in self.args] + [
            f"{k}={_short(v)}" for k, v in self.kwargs.items()
        ]
        return f"<Job {self.name}({', '.join(shown)}) not sent>"

    def _repr_html_(self) -> str | None:
        shown = [_short(a) for a in self.args] + [
            f"{k}={_short(v)}" for k, v in self.kwargs.items()
        ]
        return observe.lazy_job_html(self.name, ", ".join(shown))


def wait_or_cancel(
    handle: Any,
    timeout: float | None,
    name: str | None = None,
    hint: str = "timeout=... / --timeout",
) -> None:
    """Wait until ``handle`` is done, without fetching its result: the one wait of
    jobs, maps and cells.

    On ``timeout`` (seconds) the remote work is cancelled and ``TimeoutError``
    names ``name`` (default ``handle.name``) and how to raise it (``hint``). On
    Ctrl-C the remote work is cancelled and the ``KeyboardInterrupt`` goes on.
    With ``dc_jupyter.frozen-worker-timeout`` set, the wait also looks every
    second whether a worker running the work stopped answering for that long
    (``frozen.stop_if_frozen``: cancelled, ``FrozenWorkerError``).
    """
    __tracebackhide__ = True
    finished = threading.Event()
    # Woken by the handle itself, not by polling: no latency added to short calls.
    notify = getattr(handle, "notify_done", None)  # a job: also by a result that came early
    if notify is not None:
        notify(finished)
    else:
        handle.add_done_callback(lambda _: finished.set())
    try:
        # A bad frozen-worker setting raises in here: the work is cancelled too.
        done = frozen.wait(finished, [handle], timeout)
    except BaseException:  # KeyboardInterrupt (or a frozen worker): stop the remote work too
        handle.cancel()
        raise
    if not done and not handle.done():
        handle.cancel()
        raise TimeoutError(
            f"{name or handle.name} did not finish within {timeout:g} s; its remote work was "
            f"cancelled. Raise the timeout ({hint}) if it needs longer."
        )


def _short(value: Any, limit: int = 24) -> str:
    try:
        text = repr(value)
    except Exception:  # a preview must never fail because of a broken __repr__
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
