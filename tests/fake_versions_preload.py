"""Worker preload that makes the worker REPORT a different cloudpickle version.

The versions check can only be proved with a mismatched worker; installing a
second cloudpickle is not possible here, so the worker lies about it. What it
really runs is unchanged.
"""

import distributed.node
import distributed.worker
from distributed import versions

_real = versions.get_versions


def _fake_get_versions(packages=None):
    info = _real(packages)
    info["packages"]["cloudpickle"] = "0.0.1"
    return info


# Registration and the `versions` handler each hold their own reference.
distributed.worker.get_versions = _fake_get_versions
distributed.node.get_versions = _fake_get_versions
