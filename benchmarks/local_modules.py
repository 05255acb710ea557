"""What shipping local modules costs: per call when nothing is new, and once per version.

Starts its own ``dask scheduler`` and one-thread ``dask worker`` in a temp
directory, writes a ``mylib.py`` in another one (the "notebook"), and prints:

- the extra time per pickle of noting the modules it refers to;
- the per-call check when nothing is new (``backends.dask.modules.ensure``),
  for work that uses no local module and for work that uses ``mylib``;
- the first call that sends ``mylib``, and one after ``mylib.py`` changed.

    PYTHONPATH=. python benchmarks/local_modules.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path


def per_call_us(fn, number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    from distributed import Client

    from dc_jupyter import compute_this
    from dc_jupyter.backends.dask import modules
    from dc_jupyter.core import pickling
    from dc_jupyter.tools.cluster import ProcessCluster

    notebook = Path(tempfile.mkdtemp(prefix="bench-notebook-"))
    (notebook / "mylib.py").write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(notebook))
    import mylib

    def plain(x):
        return x * x

    call = (plain, (3,), {}, ())
    noted: set[str] = set()
    print(f"pickle a call:              {per_call_us(lambda: pickling.dumps(call)):7.1f} us")
    print(f"... noting its modules:     {per_call_us(lambda: pickling.dumps(call, set())):7.1f} us")
    pickling.dumps((mylib.f, (3,), {}, ()), noted)

    with ProcessCluster(n_workers=1).start() as cluster, Client(cluster.address) as client:
        t0 = time.perf_counter()
        modules.ensure(client, {"cloudpickle"}, "plain()")
        modules.ensure(client, noted, "f()")
        print(f"first call, sends mylib:    {(time.perf_counter() - t0) * 1e3:7.1f} ms")
        print(
            "check, no local module:    "
            f"{per_call_us(lambda: modules.ensure(client, {'cloudpickle'}, 'plain()')):7.1f} us"
        )
        print(
            "check, uses mylib:         "
            f"{per_call_us(lambda: modules.ensure(client, noted, 'f()')):7.1f} us"
        )
        (notebook / "mylib.py").write_text("def f(x):\n    return x + 2\n")
        os.utime(notebook / "mylib.py", ns=(time.time_ns() + 10**9,) * 2)
        t0 = time.perf_counter()
        modules.ensure(client, noted, "f()")
        print(f"after an edit, sent again:  {(time.perf_counter() - t0) * 1e3:7.1f} ms")
        remote = compute_this(mylib.f, client=client)
        rounds = [_timed(lambda: remote(1).compute()) for _ in range(50)]
        print(
            f"round trip using mylib:     {statistics.median(rounds) * 1e3:7.2f} ms (median of 50)"
        )


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
