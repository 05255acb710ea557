"""Lazy calls: a ``Job`` is one call of a decorated function, not yet sent.

``job.compute()`` (or ``job.run()``) sends it and waits; ``job.submit()``
sends it and returns a ``JobFuture``. A job given as an argument to another job
(also inside a list, tuple or dict) becomes a dependency that runs on the
cluster; its result never passes through the notebook.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from dc_jupyter.config import seconds
from dc_jupyter.core import observe, pickling
from dc_jupyter.core.signature import labelled_arguments
from dc_jupyter.core.submit import submit_job
from dc_jupyter.errors import SerializationError
from dc_jupyter.remote import job as remote_job

if TYPE_CHECKING:
    from dc_jupyter.core.function import RemoteFunction
    from dc_jupyter.core.futures import JobFuture


def _replace_jobs(obj: Any, deps: list[Job]) -> tuple[Any, bool]:
    """Swap jobs in ``obj`` (and in list/tuple/dict inside it) for ``Dep`` placeholders."""
    if isinstance(obj, Job):
        deps.append(obj)
        return remote_job.Dep(len(deps) - 1), True
    if type(obj) in (list, tuple):
        changed = False
        items = []
        for item in obj:
            new, hit = _replace_jobs(item, deps)
            items.append(new)
            changed |= hit
        return (type(obj)(items), True) if changed else (obj, False)
    if type(obj) is dict:
        changed = False
        out = {}
        for key, value in obj.items():
            out[key], hit = _replace_jobs(value, deps)
            changed |= hit
        return (out, True) if changed else (obj, False)
    return obj, False


def contains_job(value: Any) -> bool:
    """Whether ``value`` is a job or holds one in a list, tuple or dict (the same walk)."""
    return _replace_jobs(value, [])[1]


def _set_aside_if_large(value: Any, deps: list[Any], limit: int) -> tuple[Any, bool]:
    """Swap a value larger than ``limit`` bytes for a placeholder to scatter."""
    if type(value) in (int, float, bool, type(None)):
        return value, False
    from dask.sizeof import sizeof

    if sizeof(value) <= limit:
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
        )
        return payload, deps

    def submit(self) -> JobFuture:
        """Send the job (its dependencies first) and return at once with a ``JobFuture``."""
        return submit_job(self)

    def compute(self, timeout: float | None = None) -> Any:
        """Run the job where its backend runs work and return the result.

        ``timeout`` (seconds; default: the decorator's ``timeout``) raises
        ``TimeoutError`` and cancels the remote work when exceeded.
        """
        __tracebackhide__ = True
        # Checked before anything is sent: a bad timeout must not leave work running.
        timeout = self.function.options.timeout if timeout is None else seconds(timeout, "timeout")
        handle = self.submit()
        with observe.watching(handle):
            return wait_or_cancel(handle, timeout)

    run = compute

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


def wait_or_cancel(handle: Any, timeout: float | None) -> Any:
    """Wait for ``handle``; on timeout, cancel the remote work and raise ``TimeoutError``."""
    __tracebackhide__ = True
    try:
        return handle.result(timeout=timeout)
    except TimeoutError as exc:
        if handle.done():
            raise
        handle.cancel()
        raise TimeoutError(
            f"{handle.name} did not finish within {timeout:g} s; its remote work was cancelled. "
            "Raise the timeout (timeout=... / --timeout) if it needs longer."
        ) from exc


def _short(value: Any, limit: int = 24) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
