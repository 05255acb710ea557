"""Install the worker-side code on a Dask cluster once, so tasks name it.

Workers do not have dc_jupyter. Shipping ``remote.job``'s functions by value
inside every task cost ~1.4 ms per round trip (measured side by side: 8.1 ms
against 6.7 ms for a function the worker could import), because each worker
rebuilt that code for every task. Instead the source of ``remote/job.py`` is
installed once per cluster by two Dask plugins (``remote.plugins``: workers
that join or restart later get it too), as a module whose name carries a hash
of its content, so two versions never mix. The notebook creates the same
module under the same name, and tasks refer to its functions by name, which
plain pickle sends in a few bytes.

Not for the local and executor backends: they run ``dc_jupyter.remote.job``
directly.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

from dc_jupyter.backends.dask import bounded, connection, pushed, versions
from dc_jupyter.remote import job as remote_job
from dc_jupyter.remote import output as remote_output
from dc_jupyter.remote import plugins

# remote/output.py goes along under a hashed name of its own, which the job
# module's OUTPUT_MODULE line is rewritten to name (same line count, so the
# worker's line numbers stay those of the file).
_OUTPUT_SOURCE = Path(remote_output.__file__).read_bytes()
OUTPUT_MODULE_NAME = f"dc_jupyter_output_{hashlib.sha1(_OUTPUT_SOURCE).hexdigest()[:12]}"
_SOURCE = (
    Path(remote_job.__file__)
    .read_bytes()
    .replace(
        b'OUTPUT_MODULE = "dc_jupyter.remote.output"',
        f'OUTPUT_MODULE = "{OUTPUT_MODULE_NAME}"'.encode(),
        1,
    )
)
MODULE_NAME = f"dc_jupyter_worker_{hashlib.sha1(_SOURCE).hexdigest()[:12]}"

_lock = threading.Lock()
#: client -> id of the scheduler it installed the module on (a restarted
#: scheduler at the same address has a new id and has lost its plugins).
_installed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def local_module() -> ModuleType:
    """The worker module as created in this process, under its hashed name."""
    module = sys.modules.get(MODULE_NAME)
    if module is None:
        with _lock:
            plugins.install_module(OUTPUT_MODULE_NAME, _OUTPUT_SOURCE)
            plugins.install_module(MODULE_NAME, _SOURCE)
            module = sys.modules[MODULE_NAME]
    return module


def installed_on(client: Any) -> ModuleType:
    """The worker module, installed on ``client``'s cluster if not done yet."""
    module = local_module()
    # The identity Dask caches on connect; client.scheduler_info() would cost a
    # round trip to the scheduler on every task (~1 ms, measured).
    identity = connection.identity(client)
    scheduler_id = identity.get("id")
    if _installed.get(client) != scheduler_id:
        with _lock:
            if _installed.get(client) != scheduler_id:
                # Every worker must answer: bounded, so a frozen one is an error, not a hang.
                bounded.answered(
                    client, "installing dc_jupyter's worker code", lambda: _install(client)
                )
                _installed[client] = scheduler_id
    versions.warn_mismatched_workers(client)
    return module


def _install(client: Any) -> None:
    client.register_plugin(plugins.InstallOnScheduler(MODULE_NAME, _SOURCE))
    client.register_plugin(plugins.InstallOnWorkers(OUTPUT_MODULE_NAME, _OUTPUT_SOURCE))
    client.register_plugin(plugins.InstallOnWorkers(MODULE_NAME, _SOURCE))
    # Output events are forgotten by the scheduler once passed on.
    client.register_plugin(plugins.ForgetOutputEvents(remote_output.OUTPUT_TOPIC))
    # ... and so are the small results pushed back with their task's end.
    client.register_plugin(plugins.ForgetOutputEvents(pushed.TOPIC_PREFIX, prefix=True))
    # A map's tasks pinned to workers that all died run on those that join.
    client.register_plugin(plugins.FreeStalePins())
    # Only workers with our versions, now and joining later, get work
    # (registered even with check-versions off, so turning it on works).
    for gate in versions.gate_plugins():
        client.register_plugin(gate)
    versions.watch_gate(client)
