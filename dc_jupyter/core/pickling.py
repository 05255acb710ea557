"""Pickling on the notebook side: calls out, results back.

Everything goes through cloudpickle, so functions, lambdas, closures and
classes defined in a notebook travel by value. When something cannot be
pickled, the error names the argument (or captured variable) and its type,
and nothing has been sent.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from dc_jupyter.core import references
from dc_jupyter.errors import SerializationError
from dc_jupyter.remote import job as remote_job
from dc_jupyter.remote import modules as remote_modules
from dc_jupyter.remote import plugins

# Workers don't have dc_jupyter: ship the worker-side module's code by value.
cloudpickle.register_pickle_by_value(remote_job)
cloudpickle.register_pickle_by_value(plugins)
cloudpickle.register_pickle_by_value(remote_modules)


#: Built once here. ``remote.job`` holds the one hook on cloudpickle, and the
#: reducers of wrappers (``lru_cache``, ``singledispatch``) the workers use too.
_Pickler = remote_job.pickler_class()


def dumps(value: Any, modules: set[str] | None = None) -> bytes:
    """cloudpickle ``value``, keeping source file names so tracebacks show real lines.

    ``modules``, if given, gets the top-level names of the modules the pickle
    refers to by name (the workers must be able to import them).
    """
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, protocol=remote_job.PICKLE_PROTOCOL)
    pickler.dump(value)
    if modules is not None:
        modules.update(references.modules_in(pickler.memo.copy().values()))
    return buffer.getvalue()


type_name = remote_job.type_name


def find_unpicklable(named_values: Iterable[tuple[str, Any]]) -> tuple[str, Any, Exception] | None:
    """Return ``(label, value, error)`` for the first value that cannot be pickled."""
    for label, value in named_values:
        try:
            dumps(value)
        except Exception as exc:
            return label, value, exc
    return None


def dumps_call(
    func: Any,
    args: tuple,
    kwargs: dict,
    slots: tuple = (),
    *,
    name: str,
    labelled: Callable[[], Iterable[tuple[str, Any]]] = tuple,
    modules: set[str] | None = None,
) -> bytes:
    """Pickle a call for ``remote_job.run_job``.

    ``labelled()`` returns ``(label, value)`` pairs for the call's arguments; it
    is only called when pickling fails, to name the culprit (the hot path stays
    free of signature inspection). ``modules``: as for ``dumps``.
    """
    try:
        return dumps((func, args, kwargs, slots), modules)
    except Exception as exc:
        culprit = find_unpicklable([(f"the function {name}", func), *labelled()])
        if culprit is None:
            raise SerializationError(
                f"Cannot pickle the call to {name}(): {type(exc).__name__}: {exc}"
            ) from exc
        label, value, error = culprit
        raise SerializationError(
            f"Cannot send {label} of {name}(): a {type_name(value)} cannot be pickled "
            f"({type(error).__name__}: {error}). Nothing was sent. Pass plain data, or create "
            "the object inside the function instead."
        ) from error


def loads_result(blob: bytes) -> Any:
    """Unpickle a result blob produced by ``remote_job.dump_result``."""
    return cloudpickle.loads(blob)
