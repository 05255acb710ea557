"""What runs on a worker to send the work's output to the notebook, live.

Used by ``remote.cell`` (cells) and ``remote.job`` (jobs and map batches).
Workers have neither dc_jupyter nor (necessarily) IPython, so this module
imports only the standard library (``distributed`` and matplotlib lazily) and
builds display bundles itself, as ipyparallel's engines do: it calls the
object's ``_repr_mimebundle_`` / ``_repr_*_`` methods and falls back to
``repr`` as ``text/plain``.

While the work runs on a Dask worker, the thread running it has its own sink:
``sys.stdout``/``sys.stderr`` writes, ``display()`` calls, WARNING+ log records
and matplotlib figures go into it, in order. A process-wide flusher sends what
is pending at most every ``FLUSH_INTERVAL`` seconds as Dask events on
``OUTPUT_TOPIC`` (the scheduler forgets them once sent: ``remote.plugins``).
Nothing is sent for work that prints nothing. Each run sends at most ``limit``
bytes; the rest is counted and reported as dropped.

Events leave on the worker's ordered stream before the task's result does, so
the notebook has every message of a task once the task is done.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import logging
import os
import sys
import threading
import types

OUTPUT_TOPIC = "dc_jupyter-output"
FLUSH_INTERVAL = 0.1
#: Bytes one run (a cell, a job) may send; a map batch gets ``BATCH_LIMIT``.
RUN_LIMIT = 2_000_000
BATCH_LIMIT = 100_000
_MIME_METHODS = {
    "text/html": "_repr_html_",
    "text/markdown": "_repr_markdown_",
    "image/svg+xml": "_repr_svg_",
    "image/png": "_repr_png_",
    "image/jpeg": "_repr_jpeg_",
    "text/latex": "_repr_latex_",
    "application/json": "_repr_json_",
    "application/javascript": "_repr_javascript_",
}
_BINARY = ("image/png", "image/jpeg")
_MPL_BACKEND = "dc_jupyter_worker_mpl_backend"


# -- building display bundles ---------------------------------------------------------


def mime_bundle(obj) -> tuple[dict, dict]:
    """``(data, metadata)`` for ``obj``, as IPython's display formatter would make it."""
    data: dict = {}
    metadata: dict = {}
    if _is_figure(obj):
        return {"image/png": _figure_png(obj), "text/plain": _safe_repr(obj)}, {}
    method = getattr(type(obj), "_repr_mimebundle_", None)
    if method is not None:
        try:
            got = obj._repr_mimebundle_(include=None, exclude=None)
            if isinstance(got, tuple):
                got, metadata = got[0], dict(got[1] or {})
            data.update(got or {})
        except Exception:
            pass
    for mime, name in _MIME_METHODS.items():
        if mime in data or getattr(type(obj), name, None) is None:
            continue
        try:
            value = getattr(obj, name)()
        except Exception:
            continue
        if isinstance(value, tuple) and len(value) == 2:  # (data, metadata)
            value, extra = value
            metadata[mime] = extra
        if value is not None:
            data[mime] = value
    for mime in _BINARY:
        if isinstance(data.get(mime), bytes):
            data[mime] = base64.b64encode(data[mime]).decode("ascii")
    data.setdefault("text/plain", _safe_repr(obj))
    return data, metadata


def _safe_repr(obj) -> str:
    try:
        return repr(obj)
    except Exception:
        return f"<{type(obj).__name__} object>"


def _is_figure(obj) -> bool:
    kind = type(obj)
    return kind.__name__ == "Figure" and kind.__module__.startswith("matplotlib.")


def _figure_png(figure) -> str:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def display(*objs, raw: bool = False, metadata: dict | None = None, **_ignored) -> None:
    """``display()`` on a worker: each object goes to the notebook as a display output.

    Outside forwarded work it prints the objects, as IPython does without a shell.
    """
    sink = _current_sink()
    for obj in objs:
        if sink is None:
            print(_safe_repr(obj))
            continue
        if raw and isinstance(obj, dict):
            data, md = dict(obj), dict(metadata or {})
        else:
            data, md = mime_bundle(obj)
        sink.forwarder.add_display(data, md)


def show_figures(*_args, **_kwargs) -> None:
    """``plt.show()`` on a worker: send every open figure as image/png, then close it."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        if _current_sink() is not None:
            display(figure)
        pyplot.close(figure)


# -- routing this thread's output -------------------------------------------------------


class _ThreadRouter:
    """Stands in for ``sys.stdout``/``sys.stderr``: writes from registered threads go to
    their own sink, everything else to the original stream."""

    dc_jupyter_router = True  # duck-typed: each shipped copy of this module has its own class

    def __init__(self, original) -> None:
        self.original = original
        self.sinks: dict[int, object] = {}

    def write(self, text: str) -> int:
        sink = self.sinks.get(threading.get_ident())
        return (sink if sink is not None else self.original).write(text)

    def flush(self) -> None:
        sink = self.sinks.get(threading.get_ident())
        if sink is None:
            self.original.flush()

    def __getattr__(self, name: str):
        return getattr(self.original, name)


class _Sink:
    def __init__(self, forwarder: Forwarder, stream: str) -> None:
        self.forwarder = forwarder
        self.stream = stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.forwarder.add_text(self.stream, text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _current_sink():
    router = sys.stdout
    if not getattr(router, "dc_jupyter_router", False):
        return None
    return router.sinks.get(threading.get_ident())


class _LogHandler(logging.Handler):
    """WARNING+ records of forwarded threads go to their stderr sink, as
    ``logging.lastResort`` would print them in the notebook; other threads'
    records go to the original stderr, as before."""

    dc_jupyter_log_handler = True

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            sink = _current_sink()
            if sink is not None:
                sink.forwarder.add_text("stderr", text)
            elif not logging.getLogger().handlers[:-1]:  # only ours: be lastResort
                sys.__stderr__.write(text)
        except Exception:
            self.handleError(record)


def _install_once() -> tuple:
    """Routers on ``sys.stdout``/``sys.stderr``, ``display`` as a builtin (IPython puts
    it there), the WARNING+ log handler, and matplotlib's worker backend."""
    lock = sys.__dict__.setdefault("_dc_jupyter_router_lock", threading.Lock())
    with lock:
        for name in ("stdout", "stderr"):
            if not getattr(getattr(sys, name), "dc_jupyter_router", False):
                setattr(sys, name, _ThreadRouter(getattr(sys, name)))
        if not hasattr(builtins, "display"):
            builtins.display = display
        _take_over_ipython_display()
        root = logging.getLogger()
        if not any(getattr(h, "dc_jupyter_log_handler", False) for h in root.handlers):
            root.addHandler(_LogHandler())
        _install_matplotlib_backend()
        return sys.stdout, sys.stderr


_IPYTHON_DISPLAY_MODULES = ("IPython.core.display_functions", "IPython.display", "IPython")


def _take_over_ipython_display() -> None:
    """IPython's own ``display`` (``from IPython.display import display`` in the
    notebook, sent by reference) becomes this one on workers that have IPython:
    without a shell it would print ``<IPython.core.display.HTML object>``.

    Done now if IPython is imported, else by a finder when it is (never imported
    here: that would cost every worker a second).
    """
    for name in _IPYTHON_DISPLAY_MODULES:
        module = sys.modules.get(name)
        original = getattr(module, "display", None)
        if callable(original) and getattr(original, "__name__", "") == "display":
            module.display = display
    if not any(getattr(f, "dc_jupyter_display_finder", False) for f in sys.meta_path):
        sys.meta_path.insert(0, _DisplayFinder())


class _DisplayFinder:
    """Patches ``IPython.core.display_functions`` as it is imported (a meta path finder)."""

    dc_jupyter_display_finder = True

    def find_spec(self, name, path, target=None):
        if name != _IPYTHON_DISPLAY_MODULES[0]:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "dc_jupyter_display_finder", False):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            module.display = display  # IPython.display re-exports it from here

        spec.loader.exec_module = exec_module
        return spec


def _install_matplotlib_backend() -> None:
    """Make ``plt.show()`` send figures: a backend module that is Agg plus ``show``.

    Chosen with ``MPLBACKEND`` before user code imports pyplot; a pyplot
    imported earlier is switched over when it still uses plain Agg.
    """
    if _MPL_BACKEND not in sys.modules:
        backend = types.ModuleType(_MPL_BACKEND)

        def __getattr__(name):  # matplotlib is imported only when pyplot asks
            if name.startswith("__"):
                # Not for dunders: ``inspect.getmodule`` probes ``__file__`` of every
                # module, which Dask does for each failing task, and importing
                # matplotlib there made the first error on a worker take seconds.
                raise AttributeError(name)
            from matplotlib.backends import backend_agg

            # Into the module itself: pyplot then copies its vars().
            backend.FigureCanvas = backend_agg.FigureCanvasAgg
            backend.FigureManager = backend_agg.FigureManager
            return getattr(backend_agg, name)

        backend.__getattr__ = __getattr__
        backend.show = show_figures
        sys.modules[_MPL_BACKEND] = backend
    os.environ.setdefault("MPLBACKEND", f"module://{_MPL_BACKEND}")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and pyplot.get_backend().lower() == "agg":
        pyplot.switch_backend(f"module://{_MPL_BACKEND}")


# -- sending ---------------------------------------------------------------------------


class Forwarder:
    """One run's output: buffered in order, sent in coalesced events, capped at ``limit``."""

    def __init__(self, worker, ident: str, part: int, limit: int, attempt: str = "") -> None:
        self.worker = worker
        self.ident = ident
        self.part = part  # for a map batch: the item running now
        self.retry = 0  # for a map batch: the item's retry running now (retries=)
        self.limit = limit
        # A retried run starts its sequence again: the notebook tells runs apart by
        # this, and marks a retried one's lines. Work a run sends from its worker
        # writes as part of the run: the run's attempt, then its own.
        own = os.urandom(8).hex()
        self.attempt = f"{attempt}/{own}" if attempt else own
        self.seq = 0
        self.sent_bytes = 0
        self.dropped_bytes = 0
        self.pending: list[dict] = []
        self.lock = threading.Lock()
        self.registered = False

    def add_text(self, stream: str, text: str) -> None:
        with self.lock:
            if not self._take(len(text)):
                return
            last = self.pending[-1] if self.pending else None
            if (
                last
                and last.get("stream") == stream
                and last["part"] == self.part
                and last.get("retry", 0) == self.retry
            ):
                last["text"] += text
            else:
                chunk = {"stream": stream, "text": text, "part": self.part}
                if self.retry:
                    chunk["retry"] = self.retry
                self.pending.append(chunk)
        self._register()

    def add_display(self, data: dict, metadata: dict) -> None:
        size = sum(len(v) if isinstance(v, str) else 64 for v in data.values())
        with self.lock:
            if not self._take(size):
                return
            self.pending.append({"display": data, "metadata": metadata, "part": self.part})
        self._register()

    def _take(self, size: int) -> bool:
        # under self.lock
        if self.sent_bytes + size > self.limit:
            self.dropped_bytes += size
            return False
        self.sent_bytes += size
        return True

    def _register(self) -> None:
        if not self.registered:
            self.registered = True
            _flusher().add(self)

    def send_pending(self) -> None:
        with self.lock:
            chunks, self.pending = self.pending, []
            for chunk in chunks:
                self._send(chunk)

    def _send(self, fields: dict) -> None:
        # under self.lock: sequence numbers leave in order
        message = {"id": self.ident, "attempt": self.attempt, "seq": self.seq, **fields}
        self.seq += 1
        try:
            self.worker.log_event(OUTPUT_TOPIC, message)
        except Exception:  # e.g. a display bundle msgpack cannot take: drop it, not the work
            pass

    def close(self) -> None:
        """Send what is left; a run that sent anything ends with a ``final`` message."""
        if self.registered:
            _flusher().remove(self)
        self.send_pending()
        with self.lock:
            if self.seq or self.dropped_bytes:
                self._send({"final": True, "part": self.part, "dropped": self.dropped_bytes})


class _Flusher:
    """One thread per worker process sends every active forwarder's pending output."""

    def __init__(self) -> None:
        self.active: set = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="dc_jupyter-output", daemon=True)
        self.thread.start()

    def add(self, forwarder) -> None:
        with self.lock:
            self.active.add(forwarder)

    def remove(self, forwarder) -> None:
        with self.lock:
            self.active.discard(forwarder)

    def _run(self) -> None:
        import time

        while True:
            time.sleep(FLUSH_INTERVAL)
            with self.lock:
                active = list(self.active)
            for forwarder in active:
                forwarder.send_pending()


def _flusher():
    # Shared by every copy of this module in the process (cells bring their own copy).
    lock = sys.__dict__.setdefault("_dc_jupyter_router_lock", threading.Lock())
    with lock:
        flusher = sys.__dict__.get("_dc_jupyter_output_flusher")
        if flusher is None:
            flusher = sys.__dict__["_dc_jupyter_output_flusher"] = _Flusher()
        return flusher


def _current_worker():
    if "distributed" not in sys.modules:  # never import it here: executors may lack it
        return None
    try:
        return sys.modules["distributed"].get_worker()
    except Exception:
        return None  # local backend: print straight to this process's streams


def _current_key():
    try:
        return sys.modules["distributed.worker"].thread_state.key
    except Exception:
        return None


def current_route():
    """``(ident, part, attempt)`` of the run whose output this thread forwards, or None.

    Work a job sends from its worker (``remote.inline``) forwards its output
    under this route, so it shows in the cell of the job, marked as the job's.
    What the run printed so far is sent first, to keep the order.
    """
    sink = _current_sink()
    if sink is None:
        return None
    forwarder = sink.forwarder
    forwarder.send_pending()
    return forwarder.ident, forwarder.part, forwarder.attempt


_here = threading.local()  # in-process runs: how to mark the lines of a map's items


@contextlib.contextmanager
def prefixed_here(prefix):
    """In-process runs (the local backend): while a map batch runs in this thread,
    each line it prints starts with ``prefix(position in the batch)``, as the
    notebook marks the lines of a worker's items."""
    previous = getattr(_here, "prefix", None)
    _here.prefix = prefix
    try:
        yield
    finally:
        _here.prefix = previous


class _Prefixed:
    """A stream whose lines start with the prefix of the item running now."""

    def __init__(self, stream, run: forwarding, prefix) -> None:
        self.stream, self.run, self.prefix = stream, run, prefix
        self.at_line_start = True

    def write(self, text: str) -> int:
        pieces = []
        for line in text.splitlines(keepends=True):
            if self.at_line_start:
                pieces.append(self.prefix(self.run.part))
            pieces.append(line)
            self.at_line_start = line.endswith("\n")
        self.stream.write("".join(pieces))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class forwarding:
    """Context manager: this thread's output goes to the notebook while the work runs.

    ``ident`` names the run (a cell's id; default: the Dask key of the task);
    ``part`` is a sweep's element (cells) or an item's position in its batch
    (maps, changed with ``forwarder.part`` as items run). Outside a Dask worker
    this does nothing. Nested use (a cell inside a map batch) routes to the
    innermost run and restores the outer one after.
    """

    def __init__(
        self, ident: str | None = None, part: int = 0, limit: int = RUN_LIMIT, attempt: str = ""
    ) -> None:
        self.ident = ident
        self.part = part
        self.limit = limit
        self.attempt = attempt  # of the run that sent this work from its worker, if any
        self.forwarder: Forwarder | None = None
        self.redirected: contextlib.ExitStack | None = None

    def __enter__(self) -> forwarding:
        worker = _current_worker()
        ident = self.ident if self.ident is not None else _current_key()
        if worker is None or ident is None:
            prefix = getattr(_here, "prefix", None)
            if prefix is not None:  # in-process map batch: mark its lines right here
                self.redirected = contextlib.ExitStack()
                out, err = _Prefixed(sys.stdout, self, prefix), _Prefixed(sys.stderr, self, prefix)
                self.redirected.enter_context(contextlib.redirect_stdout(out))
                self.redirected.enter_context(contextlib.redirect_stderr(err))
            return self
        self.forwarder = Forwarder(worker, str(ident), self.part, self.limit, self.attempt)
        self.routers = _install_once()
        thread = threading.get_ident()
        self.previous = [router.sinks.get(thread) for router in self.routers]
        for router, stream in zip(self.routers, ("stdout", "stderr"), strict=True):
            router.sinks[thread] = _Sink(self.forwarder, stream)
        return self

    def set_part(self, part: int, retry: int = 0) -> None:
        self.part = part
        if self.forwarder is not None:
            with self.forwarder.lock:
                self.forwarder.part = part
                self.forwarder.retry = retry

    def __exit__(self, *exc_info) -> None:
        if self.redirected is not None:
            self.redirected.close()
        if self.forwarder is None:
            return
        try:
            if "matplotlib.pyplot" in sys.modules:  # figures left open: shown, as in a notebook
                show_figures()
        except Exception:
            pass
        thread = threading.get_ident()
        for router, previous in zip(self.routers, self.previous, strict=True):
            if previous is None:
                router.sinks.pop(thread, None)
            else:
                router.sinks[thread] = previous
        self.forwarder.close()
