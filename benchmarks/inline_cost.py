"""What running notebook code "as if here" costs on a worker, measured in-process.

    PYTHONPATH=. python benchmarks/inline_cost.py

Prints, without a cluster (the worker-side code runs in this process):
- a decorated function called inside a job (``InlineFunction``, as on a worker)
  against the same plain function, per call;
- the in-place change check of ``%%distribute`` (every captured value pickled
  and hashed before and after the cell) for a captured array of a few sizes.
"""

from __future__ import annotations

import time

import cloudpickle
import numpy as np

from dc_jupyter import compute_this
from dc_jupyter.remote import cell as remote_cell
from dc_jupyter.remote import job as remote_job


def plain_fact(n):
    return 1 if n < 2 else n * plain_fact(n - 1)


@compute_this()
def fact(n):
    return 1 if n < 2 else n * fact(n - 1)


def per_call(func, n: int, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        func(n)
    return (time.perf_counter() - start) / (repeat * n)


def main() -> None:
    # As on a worker: the decorated function arrives through a pickle round trip.
    inline = cloudpickle.loads(cloudpickle.dumps(fact))
    assert type(inline).__name__ in ("InlineFunction", "RemoteFunction")
    with remote_job.inside_job():
        plain = per_call(plain_fact, 50, 2000)
        decorated = per_call(inline, 50, 2000)
    print(f"call inside a job: plain {plain * 1e6:.2f} us, decorated {decorated * 1e6:.2f} us")

    for megabytes in (1, 10, 100):
        value = np.ones(megabytes * 2**20 // 8)
        namespace = {"data": value}
        start = time.perf_counter()
        watched = remote_cell._snapshot(namespace, ())
        changed = remote_cell._changed(namespace, watched)
        took = time.perf_counter() - start
        assert changed == []
        print(f"in-place check of a captured {megabytes} MB array: {took * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
