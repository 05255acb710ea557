"""Dask plugins that install a module from its source text, in memory.

They run on the scheduler and the workers, which do not have dc_jupyter, so
this module is pickled by value (``core.pickling`` registers it) and imports only
the standard library and ``distributed``. Nothing touches the file system:
Dask's own ``upload_file`` writes into scratch directories that another
cluster on the same machine may clean up underneath it (seen in our tests).
"""

from __future__ import annotations

import sys
import types

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin


def install_module(name: str, source: bytes) -> None:
    """Create module ``name`` from ``source`` unless this process has it already."""
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    sys.modules[name] = module


class InstallOnWorkers(WorkerPlugin):
    """Installs the module on every worker, including those that join later."""

    idempotent = True

    def __init__(self, name: str, source: bytes) -> None:
        self.name = f"install-{name}"
        self.module_name, self.source = name, source

    def setup(self, worker) -> None:
        install_module(self.module_name, self.source)


class InstallOnScheduler(SchedulerPlugin):
    """Installs the module on the scheduler, which unpickles task specs too."""

    idempotent = True

    def __init__(self, name: str, source: bytes) -> None:
        self.name = f"install-{name}"
        self.module_name, self.source = name, source

    async def start(self, scheduler) -> None:
        install_module(self.module_name, self.source)


class ForgetOutputEvents(SchedulerPlugin):
    """Drops the events of ``topic`` (or of every topic starting with it, with
    ``prefix``) from the scheduler's log once passed on.

    Dask keeps every event it relays (``client.get_events``): a cell printing
    50 MB would leave 50 MB there, readable by any client, and so would every
    result pushed back to a notebook. The scheduler calls this hook right
    after sending the event to its subscribers.
    """

    idempotent = True

    def __init__(self, topic: str, prefix: bool = False) -> None:
        self.name = f"forget-{topic}"
        self.topic = topic
        self.prefix = prefix
        self.scheduler = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def log_event(self, topic: str, msg) -> None:
        ours = topic.startswith(self.topic) if self.prefix else topic == self.topic
        if ours and self.scheduler is not None:
            broker = getattr(self.scheduler, "_broker", None)  # distributed >= 2024.2
            if broker is not None:
                broker.truncate(topic)
            else:
                self.scheduler.events.get(topic, []).clear()


class OneTaskPerWorker(WorkerPlugin):
    """Gives each worker one unit of ``resource``, so one task needing it runs at a time.

    For ``dc_jupyter.one-per-worker``: stock workers started without
    ``--resources`` get the resource when they join (this plugin runs on
    workers that join later too), whatever their thread count.
    """

    idempotent = True

    def __init__(self, resource: str) -> None:
        self.name = f"one-per-worker-{resource}"
        self.resource = resource

    async def setup(self, worker) -> None:
        if worker.state.total_resources.get(self.resource) != 1:
            # Tells the scheduler too, which then places tasks needing it.
            await worker.set_resources(**{self.resource: 1})


#: How much of the version gate's resource a matching worker gets: far more than
#: any worker runs tasks at once, so it never limits how many run.
GATE_AMOUNT = 1_000_000


def version_problems(expected: dict, packages: dict) -> list[list[str]]:
    """``[package, expected, found]`` for each package of ``expected`` whose version
    in ``packages`` differs (Python: the minor version only)."""
    problems = []
    for package, want in expected.items():
        have = packages.get(package)
        if package == "python":
            same = str(want).split(".")[:2] == str(have).split(".")[:2]
        else:
            same = str(want) == str(have)
        if not same:
            problems.append([package, str(want), str(have)])
    return problems


class VersionGate(SchedulerPlugin):
    """Admits only workers whose versions match the notebook's to dc_jupyter work.

    Every dc_jupyter task needs one unit of ``resource``; this plugin gives it,
    on the scheduler, to each matching worker as it joins: in ``add_worker``,
    which the scheduler calls before it hands the new worker any task, so a
    mismatched worker never gets one, not even for a moment. A mismatched
    worker is logged on ``topic`` (its address, name and the differing
    versions) for the notebook to warn about. The worker's own side is
    ``VersionGateOnWorker``.
    """

    idempotent = True

    def __init__(self, resource: str, expected: dict, topic: str) -> None:
        self.name = f"gate-{resource}"
        self.resource, self.expected, self.topic = resource, expected, topic
        self.scheduler = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        for address in list(scheduler.workers):
            self._admit(address)

    def add_worker(self, scheduler=None, worker=None) -> None:
        self.scheduler = scheduler or self.scheduler
        self._admit(worker)

    def _admit(self, address) -> None:
        ws = self.scheduler.workers.get(address) if self.scheduler is not None else None
        if ws is None:
            return
        packages = (getattr(ws, "versions", None) or {}).get("packages") or {}
        problems = version_problems(self.expected, packages)
        if problems:
            self.scheduler.log_event(
                self.topic,
                {"worker": address, "name": str(ws.name), "problems": problems,
                 "resource": self.resource},
            )  # fmt: skip
            return
        if ws.resources.get(self.resource) != GATE_AMOUNT:
            # What Scheduler.add_resources does, without resetting the worker's
            # other resources in use (it zeroes them all).
            ws.resources[self.resource] = GATE_AMOUNT
            ws.used_resources.setdefault(self.resource, 0)
            self.scheduler.resources.setdefault(self.resource, {})[address] = GATE_AMOUNT


class VersionGateOnWorker(WorkerPlugin):
    """The worker's side of ``VersionGate``: a matching worker holds the resource
    itself too (a worker runs a task needing a resource only if it has it).

    Decided from the same versions the worker reported when it registered, so
    the worker and the scheduler always agree. Dask sets plugins up before the
    worker reads any task from the scheduler.
    """

    idempotent = True

    def __init__(self, resource: str, expected: dict) -> None:
        self.name = f"gate-{resource}"
        self.resource, self.expected = resource, expected

    def setup(self, worker) -> None:
        import distributed.worker

        if version_problems(self.expected, distributed.worker.get_versions()["packages"]):
            return
        state = worker.state
        if self.resource not in state.total_resources:
            state.total_resources[self.resource] = GATE_AMOUNT
            state.available_resources[self.resource] = GATE_AMOUNT


class ReportWorkerJoins(SchedulerPlugin):
    """Logs an event on ``topic`` when a worker joins, so a notebook can check it.

    dc_jupyter asks the workers once whether they can import the packages the
    work needs (``backends.dask.modules``); a worker that joins later is asked
    when the notebook hears of it here.
    """

    idempotent = True

    def __init__(self, topic: str) -> None:
        self.name = f"report-{topic}"
        self.topic = topic
        self.scheduler = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def add_worker(self, scheduler=None, worker=None, **kwargs) -> None:
        (scheduler or self.scheduler).log_event(self.topic, {"worker": worker})


class FreeStalePins(SchedulerPlugin):
    """Lets tasks loosely pinned to workers that are all gone run on one that joins.

    A map pins each task loosely (``workers=[w], allow_other_workers=True``). When
    every worker dies at once (an item that kills its process can take both
    workers of a small cluster, as Dask retries it on the other one), those
    tasks wait in Dask's ``no-worker`` state; when workers join again, Dask
    moves only the tasks whose restrictions the newcomer meets, ignoring that
    the pin was loose (``Scheduler.valid_workers``), so the map waited forever.
    Plugins' ``add_worker`` runs before that check: pins to workers that no
    longer exist are dropped there.
    """

    idempotent = True
    name = "dc_jupyter-free-stale-pins"

    def add_worker(self, scheduler=None, worker=None, **kwargs) -> None:
        if scheduler is None:
            return
        for ts in list(scheduler.unrunnable):
            pins = ts.worker_restrictions
            if ts.loose_restrictions and pins and not any(a in scheduler.workers for a in pins):
                ts.worker_restrictions = None
                ts.loose_restrictions = False
