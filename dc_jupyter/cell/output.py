"""Notebook side of a ``%%distribute`` cell's live output.

Workers send ``print``/stderr chunks as Dask events (see ``remote.cell``); a
client subscribes once to the topic and hands each chunk to the
``CellOutput`` of its cell. The cell's own thread writes them out (``pump``),
so the kernel attributes them to the right cell; ``--async`` cells, which
have no waiting thread, write from the event handler instead.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from typing import Any, TextIO

from dc_jupyter.remote.cell import OUTPUT_TOPIC

_lock = threading.Lock()
_listeners: dict[str, CellOutput] = {}
_subscribed: weakref.WeakSet = weakref.WeakSet()


def _on_event(event: Any) -> None:
    _timestamp, message = event
    if not isinstance(message, dict):
        return
    with _lock:
        listener = _listeners.get(message.get("cell"))
    if listener is not None:
        listener.receive(message)


class CellOutput:
    """Collects one cell's output chunks in order and writes them to the notebook.

    ``parts`` is how many runs send output (one per element of a ``--map``);
    ``prefixes`` (one per part, e.g. ``[p=2] ``) start each line a part prints,
    so a sweep's lines can be told apart, as ipyparallel's ``[stdout:0]``.
    """

    def __init__(
        self,
        cell_id: str,
        parts: int = 1,
        direct: bool = False,
        prefixes: list[str] | None = None,
    ) -> None:
        self.cell_id = cell_id
        self.parts = parts
        self.direct = direct
        self.prefixes = prefixes
        self._line_start: dict[tuple[int, str], bool] = {}
        self.streams: dict[str, TextIO] = {"stdout": sys.stdout, "stderr": sys.stderr}
        self._next_seq = [0] * parts
        self._held: list[dict[int, dict]] = [{} for _ in range(parts)]
        self._attempt: list[str | None] = [None] * parts
        self._part_done = [False] * parts
        self._ready: list[dict] = []
        self._finished = 0
        self._cond = threading.Condition()

    def attach(self, client: Any) -> CellOutput:
        """Start receiving this cell's events from ``client``'s cluster."""
        with _lock:
            _listeners[self.cell_id] = self
            subscribe = client not in _subscribed
            if subscribe:
                _subscribed.add(client)
        if subscribe:
            # Sent on the same ordered stream as the task itself, so no chunk is missed.
            client.subscribe_topic(OUTPUT_TOPIC, _on_event)
        return self

    def detach(self) -> None:
        with _lock:
            _listeners.pop(self.cell_id, None)

    def receive(self, message: dict) -> None:
        part = message.get("part", 0)
        if not 0 <= part < self.parts:
            return
        with self._cond:
            if message.get("attempt") != self._attempt[part]:
                # First message of a (re)tried run: its sequence starts again.
                self._attempt[part] = message.get("attempt")
                self._next_seq[part] = 0
                self._held[part] = {}
                if self._part_done[part]:
                    self._part_done[part] = False
                    self._finished -= 1
            held = self._held[part]
            held[message["seq"]] = message
            while self._next_seq[part] in held:  # events may not overtake each other
                ready = held.pop(self._next_seq[part])
                self._next_seq[part] += 1
                if ready.get("final"):
                    self._part_done[part] = True
                    self._finished += 1
                else:
                    self._ready.append(ready)
            self._cond.notify_all()
        if self.direct:
            self.pump()

    @property
    def complete(self) -> bool:
        return self._finished >= self.parts

    def pump(self) -> None:
        """Write out every chunk received so far, in order."""
        with self._cond:
            ready, self._ready = self._ready, []
            # Prefixed under the lock: the line-start state is shared by writers.
            texts = [self._prefixed(chunk) for chunk in ready]
        for chunk, text in zip(ready, texts, strict=True):
            stream = self.streams.get(chunk.get("stream"), self.streams["stdout"])
            stream.write(text)
        if ready:
            for stream in self.streams.values():
                stream.flush()

    def _prefixed(self, chunk: dict) -> str:
        """The chunk's text with its part's prefix at the start of each line."""
        text = chunk.get("text", "")
        if not self.prefixes or not text:
            return text
        part = chunk.get("part", 0)
        prefix = self.prefixes[part]
        key = (part, chunk.get("stream", "stdout"))
        lines = text.splitlines(keepends=True)
        out = []
        at_start = self._line_start.get(key, True)
        for line in lines:
            out.append(prefix + line if at_start else line)
            at_start = line.endswith(("\n", "\r"))
        self._line_start[key] = at_start
        return "".join(out)

    def wait(self, seconds: float) -> None:
        """Block up to ``seconds`` or until a chunk arrives."""
        with self._cond:
            if not self._ready:
                self._cond.wait(seconds)

    def finish(self, timeout: float = 5.0) -> None:
        """After the task is done: wait (bounded) for the final marker of every part."""
        deadline = time.monotonic() + timeout
        while not self.complete and time.monotonic() < deadline:
            self.pump()
            self.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self.pump()
        self.detach()
