"""dc_jupyter's settings, kept in Dask's own configuration system.

The shipped ``dc_jupyter.yaml`` is merged with ``dask.config.update_defaults``
so user YAML, ``DASK_DC_JUPYTER__*`` variables and ``dask.config.set`` win.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "dc_jupyter.yaml")

with open(_DEFAULTS_FILE) as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


#: The longest timeout kept as given (a year); longer ones, ``inf`` included, are clamped.
MAX_SECONDS = 365 * 24 * 3600.0


def get(key: str, default: Any = None) -> Any:
    """Return the setting ``dc_jupyter.<key>``."""
    return dask.config.get(f"dc_jupyter.{key}", default)


def seconds(value: Any, what: str) -> float | None:
    """Parse a timeout given as a number or a Dask time string ("10s", "2 minutes")."""
    from dask.utils import parse_timedelta

    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{what} must be a positive number of seconds, not nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
        # (Dask's parser does not take negative numbers: say what is wrong instead.)
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    try:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        parsed = float(value) if numeric else parse_timedelta(value, default="seconds")
    except OverflowError:  # an int beyond float range: "forever"
        parsed = math.inf
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{what} must be a number of seconds or a time string like '10s', not {value!r}"
        ) from exc
    if parsed is None or not parsed > 0:  # (not > also catches nan)
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    # Waits take at most threading.TIMEOUT_MAX (~292 years): a longer one means
    # "no limit" in practice, so it is clamped, not an OverflowError later.
    return min(float(parsed), MAX_SECONDS)


@functools.lru_cache(maxsize=16)
def in_bytes(value: Any) -> int:
    """A size given as a number or a Dask string ("1 MB"), in bytes; parsed once
    per value (sizes are read on every call)."""
    from dask.utils import parse_bytes

    return parse_bytes(value) if isinstance(value, str) else int(value)
