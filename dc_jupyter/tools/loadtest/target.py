"""Which cluster a load test runs on: one it starts itself, or one that already runs.

Either way the test opens its own ``distributed.Client`` (not the notebook's
chosen connection) and, for each worker count, names the workers to use; the
tasks are restricted to them with Dask's ``workers=``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from dc_jupyter.backends.dask import connection
from dc_jupyter.tools.cluster import ProcessCluster

#: How long a load test on a running scheduler waits for workers still joining
#: (``dask worker`` processes started just before it take seconds to register).
WORKER_WAIT = 60.0
#: ... and how long the set of workers must stay the same to count as complete.
WORKERS_SETTLED = 2.0


def _sorted_workers(client: Any) -> list[str]:
    workers = connection.scheduler_info(client).get("workers", {})
    return sorted(workers, key=lambda a: (str(workers[a].get("name", "")), a))


def powers_of_two(total: int) -> list[int]:
    """1, 2, 4, ... below ``total``, then ``total``."""
    counts, n = [], 1
    while n < total:
        counts.append(n)
        n *= 2
    return [*counts, total]


class OwnCluster:
    """``dask scheduler`` and one-thread ``dask worker`` processes started here, grown as needed."""

    existing = False

    def __init__(self, counts: Sequence[int]) -> None:
        self.counts = sorted(set(counts))
        self.cluster = ProcessCluster(n_workers=self.counts[0])
        self.client: Any = None

    def start(self, say: Callable[[str], None] = print) -> Any:
        self.cluster.start(timeout=120)
        self.client = connection._open_client(self.cluster.address)
        connection.ensure_compatible(self.client)
        return self.client

    def worker_counts(self) -> list[int]:
        return self.counts

    def workers(self, n: int) -> list[str]:
        while len(self.cluster.workers) < n:
            self.cluster.add_worker()
        self.client.wait_for_workers(n, timeout=120)
        return _sorted_workers(self.client)[:n]

    def where(self) -> str:
        return f"dask scheduler and dask worker processes started on 127.0.0.1 ({self.counts[0]})"

    def close(self) -> None:
        if self.client is not None:
            connection._close_quietly(self.client)
        self.cluster.stop()


class ExistingCluster:
    """A running scheduler (address or scheduler file): scaled over subsets of its workers."""

    existing = True

    def __init__(
        self,
        address: str | None = None,
        scheduler_file: str | None = None,
        counts: Sequence[int] | None = None,
    ) -> None:
        if (address is None) == (scheduler_file is None):
            raise ValueError("give a scheduler address or a scheduler file, exactly one")
        self.address = address
        self.scheduler_file = scheduler_file
        self.requested = sorted(set(counts)) if counts else None
        self.client: Any = None
        self.all_workers: list[str] = []

    def start(self, say: Callable[[str], None] = print) -> Any:
        if self.scheduler_file is not None:
            try:
                with open(self.scheduler_file) as f:
                    self.address = json.load(f)["address"]
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(
                    f"Cannot read a scheduler address from {self.scheduler_file!r} ({exc}); "
                    "pass the file `dask scheduler --scheduler-file FILE` wrote."
                ) from None
        self.client = connection._open_client(self.address)
        connection.ensure_compatible(self.client)
        self.all_workers = _sorted_workers(self.client)
        wanted = max(self.requested or [1])
        if len(self.all_workers) < wanted:
            say(
                f"waiting up to {WORKER_WAIT:g} s for workers to join {self.address} "
                f"({len(self.all_workers)} so far, {wanted} needed)..."
            )
            self.all_workers = self._wait_for_workers(wanted)
        if not self.all_workers:
            raise RuntimeError(
                f"The scheduler at {self.address} has no workers; start some with "
                f"`dask worker {self.address} --nthreads 1`."
            )
        too_many = [n for n in self.requested or () if n > len(self.all_workers)]
        if too_many:
            raise ValueError(
                f"--workers asks for {max(too_many)} workers but the scheduler at {self.address} "
                f"has {len(self.all_workers)}; ask for at most {len(self.all_workers)}."
            )
        return self.client

    def _wait_for_workers(self, wanted: int) -> list[str]:
        """The workers once at least ``wanted`` have joined and no more came for
        ``WORKERS_SETTLED`` seconds (workers started together join one by one),
        or what there is after ``WORKER_WAIT`` seconds."""
        deadline = time.monotonic() + WORKER_WAIT
        seen, since = _sorted_workers(self.client), time.monotonic()
        while time.monotonic() < deadline:
            if len(seen) >= wanted and time.monotonic() - since >= WORKERS_SETTLED:
                break
            time.sleep(0.25)
            now = _sorted_workers(self.client)
            if now != seen:
                seen, since = now, time.monotonic()
        return seen

    def worker_counts(self) -> list[int]:
        return self.requested or powers_of_two(len(self.all_workers))

    def workers(self, n: int) -> list[str]:
        alive = set(_sorted_workers(self.client))
        chosen = [w for w in self.all_workers if w in alive][:n]
        if len(chosen) < n:
            raise RuntimeError(
                f"Only {len(chosen)} of the {len(self.all_workers)} workers the test started "
                f"with are still connected to {self.address}; {n} are needed."
            )
        return chosen

    def where(self) -> str:
        return f"the cluster at {self.address} ({len(self.all_workers)} workers)"

    def close(self) -> None:
        # Closing our client releases every future it held: the scheduler
        # forgets our tasks and data; the cluster itself keeps running.
        if self.client is not None:
            connection._close_quietly(self.client)
