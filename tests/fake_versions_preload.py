"""Worker preload that makes the worker REPORT different package versions.

This is a stand-in for what cannot exist here: the versions check can only be
proved with a mismatched worker, and a second Python or cloudpickle cannot be
installed on this machine, so the worker lies about its versions. What it
really runs is unchanged.

``DC_JUPYTER_FAKE_VERSIONS`` says what to report, e.g. ``python=3.10.14`` or
``cloudpickle=0.0.1,python=3.10.14`` (default: ``cloudpickle=0.0.1``).
"""

import os

import distributed.node
import distributed.worker
from distributed import versions

_real = versions.get_versions
_FAKES = dict(
    item.split("=", 1)
    for item in os.environ.get("DC_JUPYTER_FAKE_VERSIONS", "cloudpickle=0.0.1").split(",")
)


def _fake_get_versions(packages=None):
    info = _real(packages)
    info["packages"].update(_FAKES)
    if "python" in _FAKES:
        info["host"]["python"] = _FAKES["python"]
    return info


# Registration and the `versions` handler each hold their own reference.
distributed.worker.get_versions = _fake_get_versions
distributed.node.get_versions = _fake_get_versions
