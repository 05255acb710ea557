"""Per-call cost of the output plumbing: a job that prints nothing vs one that prints a line.

    PYTHONPATH=. python benchmarks/output_percall.py

Median round trip of 300 sequential ``f(i).compute()`` calls on a one-worker
``ProcessCluster``. Run it with another checkout on PYTHONPATH to compare.
"""

import contextlib
import io
import statistics
import tempfile
import time

import dc_jupyter
from dc_jupyter import compute_this
from dc_jupyter.tools.cluster import ProcessCluster


def quiet(x):
    return x


def loud(x):
    print("line", x)
    return x


pc = ProcessCluster(n_workers=1, workdir=tempfile.mkdtemp()).start(timeout=240)
try:
    dc_jupyter.connect(pc.address)
    print(dc_jupyter.__file__)
    for fn in (quiet, loud):
        f = compute_this()(fn)
        for i in range(20):
            with contextlib.redirect_stdout(io.StringIO()):
                f(i).compute()
        times = []
        for _round in range(3):
            for i in range(100):
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    f(i).compute()
                times.append(time.perf_counter() - t)
        print(
            f"{fn.__name__}: median {statistics.median(times) * 1000:.2f} ms over {len(times)} calls"
        )
finally:
    dc_jupyter.close()
    pc.stop()
