"""Live terminal monitoring of a load test, and the per-second throughput it samples.

On a terminal: tqdm bars (a kept library, already a dependency) for overall
progress with the throughput of the last seconds, one line per worker (calls,
busy share, state) and the dashboard link. Not on a terminal (CI logs, pipes):
one plain line every ``plain_every`` seconds. Either way the samples give the
throughput-over-time series of each configuration.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

#: Seconds over which "recent" throughput is measured.
RECENT_SECONDS = 3.0
_SAMPLE_EVERY = 0.1


@dataclass
class Live:
    """One configuration while it runs: what the monitor reads, and its samples.

    ``done()`` counts finished calls; ``per_worker()`` gives each worker's
    calls and busy seconds so far. Both are called from the monitor thread.
    """

    label: str
    total: int
    workers: list[str]
    slots_per_worker: dict[str, int]
    done: Callable[[], int]
    per_worker: Callable[[], dict[str, tuple[int, float]]]
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int]] = field(default_factory=lambda: [(0.0, 0)])

    def sample(self) -> None:
        self.samples.append((time.monotonic() - self.started, self.done()))

    def recent_rate(self, seconds: float = RECENT_SECONDS) -> float:
        """Calls per second over the last ``seconds`` (or since the start)."""
        now, count = self.samples[-1]
        for t, c in reversed(self.samples):
            if now - t >= seconds:
                return (count - c) / (now - t)
        t, c = self.samples[0]
        return (count - c) / (now - t) if now > t else 0.0

    def timeline(self, wall: float) -> list[int]:
        """Calls finished in each whole second from the start (the last one may be partial)."""
        points = [*self.samples, (wall, self.total)]
        seconds = max(1, math.ceil(wall))
        out, previous, i = [], 0, 0
        for k in range(1, seconds + 1):
            while i + 1 < len(points) and points[i + 1][0] <= k:
                i += 1
            now = points[i][1] if k < seconds else self.total
            out.append(now - previous)
            previous = now
        return out


class Monitor:
    """Shows progress on ``stream`` (stderr by default) while configurations run."""

    def __init__(
        self,
        stream: Any = None,
        tty: bool | None = None,
        plain_every: float = 2.0,
        state: Callable[[list[str]], dict[str, str]] | None = None,
        dashboard: str | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)() if tty is None else tty
        self.plain_every = plain_every
        self.state = state  # worker addresses -> "running 1" / "idle" / "gone"
        self.dashboard = dashboard

    def line(self, text: str) -> None:
        """A permanent line (above the live bars on a terminal)."""
        if self.tty:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    @contextmanager
    def watch(self, live: Live) -> Iterator[Live]:
        """Sample ``live`` and show it until the block ends."""
        stop = threading.Event()
        view = _Bars(self, live) if self.tty else _Plain(self, live)
        thread = threading.Thread(
            target=self._loop, args=(live, view, stop), name="dc_jupyter-loadtest", daemon=True
        )
        thread.start()
        try:
            yield live
        finally:
            stop.set()
            thread.join()
            view.close()

    def _loop(self, live: Live, view: Any, stop: threading.Event) -> None:
        states: dict[str, str] = {}
        last_state = 0.0
        while not stop.wait(_SAMPLE_EVERY):
            try:
                live.sample()
                now = time.monotonic()
                if self.state is not None and now - last_state >= 0.5:
                    states, last_state = self.state(live.workers), now
                view.update(states)
            except Exception as exc:  # the display must never end the load test
                self.line(f"(monitor: {type(exc).__name__}: {exc})")


def worker_lines(live: Live, states: dict[str, str]) -> list[str]:
    """One short text per worker: calls, busy share and state."""
    elapsed = max(time.monotonic() - live.started, 1e-9)
    per_worker = live.per_worker()
    lines = []
    for worker in live.workers:
        calls, busy = per_worker.get(worker, (0, 0.0))
        share = busy / (elapsed * live.slots_per_worker.get(worker, 1))
        state = states.get(worker, "")
        now = f"; now {state}" if state else ""
        lines.append(f"{worker}: {calls} calls, {min(share, 1.0):.0%} busy{now}")
    return lines


class _Bars:
    """tqdm: one progress bar, one text line per worker, the dashboard link."""

    def __init__(self, monitor: Monitor, live: Live) -> None:
        from tqdm import tqdm

        self.live = live
        kwargs = {"file": monitor.stream, "leave": False, "dynamic_ncols": True}
        self.bar = tqdm(total=live.total, desc=live.label, unit="call", position=0, **kwargs)
        self.lines = [
            tqdm(total=0, bar_format="{desc}", position=i + 1, **kwargs)
            for i in range(len(live.workers) + 1)
        ]
        link = monitor.dashboard or "(no dashboard)"
        self.lines[-1].set_description_str(f"  dashboard: {link}")

    def update(self, states: dict[str, str]) -> None:
        self.bar.n = self.live.samples[-1][1]
        self.bar.set_postfix_str(f"{self.live.recent_rate():,.1f}/s last {RECENT_SECONDS:g} s")
        for line, text in zip(self.lines, worker_lines(self.live, states), strict=False):
            line.set_description_str(f"  {text}")

    def close(self) -> None:
        for line in reversed(self.lines):
            line.close()
        self.bar.close()


class _Plain:
    """Not a terminal: a line every ``plain_every`` seconds, no control characters.

    A run shorter than that still gets one line, its final state, when it ends.
    """

    def __init__(self, monitor: Monitor, live: Live) -> None:
        self.monitor = monitor
        self.live = live
        self.last = time.monotonic()
        self.states: dict[str, str] = {}
        self.printed = False

    def update(self, states: dict[str, str]) -> None:
        self.states = states
        if time.monotonic() - self.last >= self.monitor.plain_every:
            self._print()

    def _print(self) -> None:
        self.last, self.printed = time.monotonic(), True
        live = self.live
        workers = "; ".join(worker_lines(live, self.states))
        self.monitor.line(
            f"[{live.label}] {live.samples[-1][1]}/{live.total} calls, "
            f"{live.recent_rate():,.1f}/s over the last {RECENT_SECONDS:g} s | {workers}"
        )

    def close(self) -> None:
        if not self.printed:
            self.live.sample()
            self._print()
