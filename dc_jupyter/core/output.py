"""Notebook side of the work's live output: prints, displays, warnings, logs.

Workers send output as Dask events (``remote.output``), tagged with the
task's key (or a cell's id). Each job, map and cell opens a ``Listener``
before it is sent; one subscription per client hands each event to its
listener, and one writer thread writes them out, in order:

- in a Jupyter kernel, as ``stream`` and ``display_data`` messages whose
  parent is the cell that started the work (ipykernel's thread parent), so
  they land in that cell even when another cell runs by then;
- ``--async`` cells (``keep_in=...``) write into a display of their own cell
  that is updated as output arrives, since their cell has ended; so does work
  still running when the cell that started it ends (a ``.submit()`` handle):
  what it prints later goes into a display left in that cell as it ended;
- in terminal IPython and scripts, on stdout/stderr (rich output as text).

A map's lines start with their item (``[item 3] ``, or a sweep's ``[p=2] ``),
and at most ``max_lines`` lines of a map are shown; the rest are counted and
reported at the end, with what workers dropped over their own cap.
"""

from __future__ import annotations

import html
import logging
import queue
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from dc_jupyter.remote.output import OUTPUT_TOPIC

logger = logging.getLogger(__name__)

#: Lines of one map shown in the notebook; the rest are counted, not shown.
MAP_MAX_LINES = 1000
#: How long a finished job waits for its output to be written (normally at once).
WRITE_TIMEOUT = 10.0

_lock = threading.Lock()
_listeners: dict[str, Listener] = {}
_subscribed: weakref.WeakSet = weakref.WeakSet()
_queue: queue.SimpleQueue = queue.SimpleQueue()
_writer: threading.Thread | None = None
#: Seconds the writer thread waits for output before it ends (no thread left behind).
WRITER_IDLE_SECONDS = 2.0


def open_output(
    client: Any,
    ident: str,
    *,
    locate: Callable[[int, int], int | None] | None = None,
    prefix: Callable[[int], str] | None = None,
    max_lines: int | None = None,
    keep_in: Any = None,
) -> Listener | None:
    """Start receiving the output of the work ``ident`` (a task key, or a map's key
    prefix with ``locate(batch, position) -> item``); None without a Dask client."""
    if client is None:
        return None  # in-process backends print straight into the cell
    listener = Listener(ident, locate, prefix, max_lines, keep_in)
    listener.client = weakref.ref(client)
    _hook_late_output(listener.target.shell)
    with _lock:
        _listeners[ident] = listener
        subscribe = client not in _subscribed
        if subscribe:
            _subscribed.add(client)
    if subscribe:
        # Events travel on the same ordered stream as the task's completion, so
        # a task's output has arrived by the time it is done.
        client.subscribe_topic(OUTPUT_TOPIC, _on_event)
    return listener


def _on_event(event: Any) -> None:
    _timestamp, message = event
    if not isinstance(message, dict):
        return
    key = str(message.get("id", ""))
    with _lock:
        listener = _listeners.get(key)
        batch = None
        if listener is None and "-" in key:  # a map's batch: <name>-map-<token>-<batch>
            prefix, _, number = key.rpartition("-")
            listener = _listeners.get(prefix)
            batch = int(number) if number.isdigit() else None
    if listener is not None:
        listener.receive(message, batch)


class Listener:
    """One job's, map's or cell's output on its way to the notebook."""

    def __init__(
        self,
        ident: str,
        locate: Callable[[int, int], int | None] | None,
        prefix: Callable[[int], str] | None,
        max_lines: int | None,
        keep_in: Any,
    ) -> None:
        self.ident = ident
        self.locate = locate
        self.prefix = prefix
        self.max_lines = max_lines
        self.lines = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.target = _Target.capture(keep_in)
        self._line_start: dict[tuple[int, str], bool] = {}
        self._received = 0
        self._seen: set[tuple] = set()  # (run id, attempt, sequence number) of each message
        self._attempts: dict[Any, list[str]] = {}  # run id -> its attempts, first seen first
        self._state = threading.Condition()
        self._written = 0
        self._closed = threading.Event()
        self._closing = False
        self.client: Callable[[], Any] = lambda: None  # a weak reference, set when opened

    # -- receiving (the client's event loop) -------------------------------
    def receive(self, message: dict, batch: int | None) -> None:
        part = message.get("part", 0)
        if batch is not None and self.locate is not None:
            part = self.locate(batch, part)  # now: the batch is still in flight
            if part is None:
                return
        # Every client of this process subscribed to the scheduler gets each event
        # (e.g. connect() and compute_this(address=...) to one cluster): once only.
        token = (message.get("id"), message.get("attempt"), message.get("seq"))
        with self._state:
            if token in self._seen:
                return
            self._seen.add(token)
            self._received += 1
            number = self._attempt_number(message)
        _enqueue(self, {**message, "part": part, "attempt_number": number})

    def _attempt_number(self, message: dict) -> int:
        """1 for a run's first attempt; a retry (Dask's ``retries=``, a rerun after a
        worker died, a map item's retry) counts up. Work the run sent from its
        worker (``run/its own`` attempts) counts as the run."""
        run = str(message.get("attempt", "")).partition("/")[0]
        attempts = self._attempts.setdefault(message.get("id"), [])
        if run not in attempts:
            attempts.append(run)
        return attempts.index(run) + 1 + int(message.get("retry", 0))

    def finish(self) -> None:
        """The work is done: write what came, then the notes, then stop listening."""
        with self._state:
            if self._closing:
                return
            self._closing = True
            silent = self._received == 0
        if silent:  # the common case: nothing printed, no thread involved
            self._close()
        else:
            _enqueue(self, None)

    def running(self) -> bool:
        """Whether its work may still print: not finished (a map's, a cell's or a
        handle's listener is finished once its result is taken)."""
        if self._closing:
            return False
        client = self.client()
        state = getattr(client, "futures", {}).get(self.ident) if client is not None else None
        if state is None:  # a map, by its key prefix: finished by the map when done
            return client is not None
        return getattr(state, "status", None) not in ("finished", "error", "cancelled", "lost")

    def wait_written(self, timeout: float = WRITE_TIMEOUT) -> None:
        """Block until everything received so far is written (after ``finish``: all)."""
        if self._closing:
            self._closed.wait(timeout)
            return
        with self._state:
            self._state.wait_for(lambda: self._written >= self._received, timeout)

    def _close(self) -> None:
        with _lock:
            if _listeners.get(self.ident) is self:
                del _listeners[self.ident]
        self._closed.set()

    # -- writing (the writer thread) ---------------------------------------
    def write(self, message: dict | None) -> None:
        if message is None:
            self._write_notes()
            self.target.flush()
            self._close()
            return
        try:
            if message.get("final"):
                self.dropped_bytes += int(message.get("dropped", 0))
            elif "display" in message:
                if self._room(1):
                    self.target.display(message["display"], message.get("metadata") or {})
            elif "text" in message:
                text = self._prefixed(message)
                if text:
                    self.target.stream(message.get("stream", "stdout"), text)
        finally:
            with self._state:
                self._written += 1
                self._state.notify_all()

    def _room(self, lines: int) -> bool:
        if self.max_lines is not None and self.lines + lines > self.max_lines:
            self.dropped_lines += lines
            return False
        self.lines += lines
        return True

    def _prefixed(self, message: dict) -> str:
        """The text with the item's prefix at the start of each line, within the cap."""
        text = message["text"]
        part = message.get("part", 0)
        prefix = self.prefix(part) if self.prefix is not None else ""
        number = message.get("attempt_number", 1)
        if number > 1:  # a retry prints again: say which attempt a line is from
            prefix += f"[attempt {number}] "
        key = (part, message.get("stream", "stdout"), number)
        at_start = self._line_start.get(key, True)
        out = []
        for line in text.splitlines(keepends=True):
            if at_start and not self._room(1):
                at_start = line.endswith(("\n", "\r"))
                continue
            out.append(prefix + line if at_start else line)
            at_start = line.endswith(("\n", "\r"))
        self._line_start[key] = at_start
        return "".join(out)

    def _write_notes(self) -> None:
        notes = []
        if self.dropped_lines:
            notes.append(
                f"{self.dropped_lines:,} more lines were not shown (at most "
                f"{self.max_lines:,} lines of a map's output are)"
            )
        if self.dropped_bytes:
            notes.append(
                f"{self.dropped_bytes:,} bytes were dropped on the workers (each task sends "
                "at most 2 MB, a map's batch 100 kB)"
            )
        if notes:
            text = (
                f"dc_jupyter: output truncated: {'; '.join(notes)}. Write large output to a file.\n"
            )
            self.target.stream("stderr", text)


def _enqueue(listener: Listener, message: dict | None) -> None:
    global _writer
    _queue.put((listener, message))
    # Always under the lock: the writer decides to end under it too, so a message
    # put while it ends is never left without a writer.
    with _lock:
        if _writer is None:
            _writer = threading.Thread(
                target=_write_loop, name="dc_jupyter-output-writer", daemon=True
            )
            _writer.start()


def _write_loop() -> None:
    global _writer
    while True:
        try:
            listener, message = _queue.get(timeout=WRITER_IDLE_SECONDS)
        except queue.Empty:
            with _lock:
                if _queue.empty():  # idle: end, like the monitor; the next message starts one
                    _writer = None
                    return
            continue
        try:
            listener.write(message)
        except Exception:  # a broken stream must not stop other work's output
            logger.exception("dc_jupyter: could not write output")
        if _queue.empty():
            for target in _Target.dirty():
                target.flush()


# -- where output goes ---------------------------------------------------------------------


class _Target:
    """The cell output goes to: its stream/display messages, or a display of its own."""

    _dirty: set = set()  # only the writer thread touches it

    def __init__(self, shell: Any, parent: Any, handle: Any) -> None:
        self.shell = shell
        self.parent = parent
        self.handle = handle  # --async: a display updated with everything so far
        self.parts: list[tuple[str, Any]] = []

    @classmethod
    def capture(cls, keep_in: Any) -> _Target:
        """Where the calling cell's output goes, remembered for other threads."""
        shell = _shell()
        parent = None
        if shell is not None and hasattr(shell, "set_thread_parent"):
            parent = getattr(shell, "parent_header", None)
        return cls(shell, parent, keep_in)

    @classmethod
    def dirty(cls) -> list[_Target]:
        found = list(cls._dirty)
        cls._dirty.clear()
        return found

    def _as_parent(self) -> None:
        if self.parent is not None:
            self.shell.set_thread_parent(self.parent)

    def stream(self, name: str, text: str) -> None:
        if self.handle is not None:
            self._keep(("stderr" if name == "stderr" else "stdout", text))
            return
        self._as_parent()
        stream = sys.stderr if name == "stderr" else sys.stdout
        stream.write(text)
        stream.flush()  # before a display that follows: keep the order

    def display(self, data: dict, metadata: dict) -> None:
        if self.handle is not None:
            self._keep(("display", data))
            return
        self._as_parent()
        if self.shell is None:
            print(data.get("text/plain", ""))
            return
        from IPython.display import display

        display(data, raw=True, metadata=metadata)

    def _keep(self, part: tuple[str, Any]) -> None:
        self.parts.append(part)
        _Target._dirty.add(self)

    def flush(self) -> None:
        """``--async``: show everything so far in the cell's own display."""
        if self.handle is None or not self.parts:
            return
        # An update travels with the parent of the cell running NOW (a thread
        # that never set one gets the kernel's global parent): front ends (and
        # nbclient) apply display updates they receive for the running cell.
        updater = threading.Thread(target=self._update)
        updater.start()
        updater.join()
        resend_at_next_cell(self._update, self.shell)

    def _update(self) -> None:
        self.handle.update(_bundle(list(self.parts)), raw=True)


def _hook_late_output(shell: Any) -> None:
    with _lock:
        if getattr(shell, "kernel", None) is None or shell in _hooked_late:
            return
        _hooked_late.add(shell)
    shell.events.register("post_run_cell", _keep_late_output)


_hooked_late: weakref.WeakSet = weakref.WeakSet()


def _keep_late_output(*_args: Any) -> None:
    """``post_run_cell``: work this cell started that still runs (a ``.submit()``
    handle nobody waited for) gets a display in the cell now, while it still
    runs, and writes what it prints from now on into it, as ``--async`` cells
    do. Sent later as plain output, with a cell that has ended as parent, it
    would be dropped by front ends (JupyterLab, nbclient) or shown elsewhere."""
    shell = _shell()
    now = _msg_id(getattr(shell, "parent_header", None))
    if now is None:
        return
    with _lock:
        listeners = list(_listeners.values())
    for listener in listeners:
        target = listener.target
        if target.handle is None and _msg_id(target.parent) == now and listener.running():
            target.handle = output_display()


def _msg_id(parent: Any) -> Any:
    header = parent.get("header") if isinstance(parent, dict) else None
    return header.get("msg_id") if isinstance(header, dict) else None


#: Strong references: nothing else may hold an --async cell's target by then.
_resend: set[Callable[[], Any]] = set()
_hooked: weakref.WeakSet = weakref.WeakSet()


def resend_at_next_cell(send: Callable[[], Any], shell: Any = None) -> None:
    """Call ``send`` (a display update) again at the end of the next cell.

    ipykernel sends a background thread's update with the latest cell as
    parent: sent while no cell runs, it reaches a live front end, but nbclient
    and nbconvert (which listen to the running cell only) drop it. Sent again
    from the next cell's own thread, it belongs to that cell. Without an
    IPython shell there are no cells: nothing is kept.
    """
    shell = shell if shell is not None else _shell()
    if shell is None:
        return
    with _lock:
        _resend.add(send)
        hook = shell not in _hooked
        _hooked.add(shell)
    if hook:
        shell.events.register("post_run_cell", _resend_updates)


def _resend_updates(*_args: Any) -> None:
    """``post_run_cell``: send the displays updated since the last cell again."""
    with _lock:
        sends = list(_resend)
        _resend.clear()
    for send in sends:
        try:
            send()
        except Exception:  # a display problem must not break the notebook's cells
            logger.debug("dc_jupyter: could not send a display update again", exc_info=True)


def _bundle(parts: list[tuple[str, Any]]) -> dict:
    """Text and rich outputs as one display bundle, laid out as a cell shows them.

    Consecutive text of one stream is one block (one line per ``<pre>`` showed
    each print double-spaced in JupyterLab); printed text alone is plain text,
    so it looks like any cell's printed output; rich outputs need HTML, where
    stderr keeps the theme's error background.
    """
    runs: list[tuple[str, Any]] = []
    for kind, value in parts:
        if kind in _STREAMS and runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + value)
        else:
            runs.append((kind, value))
    text = "".join(v if k in _STREAMS else v.get("text/plain", "") + "\n" for k, v in runs)
    if all(kind == "stdout" for kind, _ in runs):
        return {"text/plain": text}
    return {"text/plain": text, "text/html": "".join(_html_piece(k, v) for k, v in runs)}


_STREAMS = ("stdout", "stderr")
_PRE = "margin:0;padding:0 0 0.2em 0;white-space:pre-wrap"


def _html_piece(kind: str, value: Any) -> str:
    if kind == "stdout":
        return f'<pre style="{_PRE}">{html.escape(value)}</pre>'
    if kind == "stderr":
        style = f"{_PRE};background:var(--jp-rendermime-error-background, transparent)"
        return f'<pre style="{style}">{html.escape(value)}</pre>'
    if "text/html" in value:
        return value["text/html"]
    if "image/png" in value:
        return f'<img src="data:image/png;base64,{value["image/png"]}">'
    if "image/jpeg" in value:
        return f'<img src="data:image/jpeg;base64,{value["image/jpeg"]}">'
    if "image/svg+xml" in value:
        return value["image/svg+xml"]
    return f'<pre style="{_PRE}">{html.escape(value.get("text/plain", ""))}</pre>'


def _shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def output_display() -> Any:
    """A display in the running cell for output that arrives after it ended
    (``--async``), or None outside a Jupyter kernel."""
    shell = _shell()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    from IPython.display import display

    return display({"text/plain": ""}, raw=True, display_id=True)
