"""Snapshots of a job or a map, and their text and HTML forms.

What a live widget shows, reduced to plain data (``JobState``, ``MapState``)
and rendered as ``text/plain`` and ``text/html``: the fallback kept in saved
notebooks, nbconvert HTML and terminals. Not for ipywidgets (``widgets.py``)
nor for deciding when to refresh (``monitor.py``); imports no ipywidgets.
"""

from __future__ import annotations

import html
import reprlib
import time
from dataclasses import dataclass, field
from typing import Any

#: Colours of the bar segments and of the card's left border: JupyterLab's
#: theme variables, with fallbacks for pages without them (nbconvert's classic
#: template, GitHub strips styles anyway). Never used for text: text keeps the
#: theme's font colour, so it reaches 4.5:1 in light and dark themes alike, and
#: the state is always spelled out (with a symbol), never told by colour alone.
COLOURS = {
    "queued": "var(--jp-border-color1, #9e9e9e)",
    "running": "var(--jp-brand-color1, #1976d2)",
    "finished": "var(--jp-success-color1, #388e3c)",
    "failed": "var(--jp-error-color1, #d32f2f)",
    "cancelled": "var(--jp-warn-color1, #f57c00)",
    "not sent": "var(--jp-border-color1, #9e9e9e)",
}
#: A symbol beside each state word, so the state does not rest on colour.
SYMBOLS = {
    "queued": "…",
    "running": "▶",
    "finished": "✓",
    "failed": "✗",
    "cancelled": "■",
    "not sent": "○",
    "unfinished": "?",
}
#: The empty part of the bar.
_TRACK = "var(--jp-layout-color3, #e0e0e0)"
#: Text and link colours: the theme's own (high contrast in both themes).
_TEXT = "color:var(--jp-ui-font-color1, inherit)"
_LINK = "color:var(--jp-content-link-color, #0d47a1);text-decoration:underline"
_FONT = (
    "font-family:var(--jp-ui-font-family, sans-serif);font-size:var(--jp-ui-font-size1, 13px);"
    "line-height:1.5"
)

_preview = reprlib.Repr()
_preview.maxstring = 60
_preview.maxother = 60
_preview.maxlist = _preview.maxtuple = _preview.maxdict = _preview.maxset = 6


def short_repr(value: Any, limit: int = 80) -> str:
    """A one-line preview of ``value``, at most ``limit`` characters."""
    try:
        text = _preview.repr(value)
    except Exception as exc:  # a broken __repr__ must not break the display
        text = f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the one number format -----------------------------------------------------
# Widgets, the HTML/text fallbacks and the terminal bar all format through
# these, so the same count never reads two ways ("200000" beside "204,549.8").


def number(n: int) -> str:
    """``1,234``."""
    return f"{n:,}"


def rate(per_second: float) -> str:
    """``1,235/s`` from 100 a second up, ``45.1/s`` below."""
    return f"{per_second:,.0f}/s" if per_second >= 100 else f"{per_second:,.1f}/s"


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.0 s``, ``3 min 05 s``, ``2 h 01 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def display_name(handle: Any) -> str:
    """What a display calls ``handle``: its ``label`` if it has one (a cell's
    ``In[7] %%distribute``), else ``square`` for a job, ``square.map`` for a map."""
    label = getattr(handle, "label", None)
    if label:
        return label
    return f"{handle.name}.map" if callable(getattr(handle, "progress", None)) else handle.name


def short_worker(address: str, names: dict[str, str] | None = None) -> str:
    """A worker's name if it has one of its own, else ``tcp://10.0.0.5:40123`` ->
    ``10.0.0.5:40123``."""
    name = (names or {}).get(address)
    if name is not None and str(name) != address:
        return str(name)
    return address.split("://", 1)[-1]


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _state_html(state: str, words: str) -> str:
    symbol = SYMBOLS.get(state, "")
    return (
        f"<span class='dcj-state' style='flex:0 0 auto;white-space:nowrap;font-weight:bold'>"
        f"<span aria-hidden='true'>{symbol}</span> {_esc(words)}</span>"
    )


def _title_html(name: str) -> str:
    # Ellipsized when the row is narrow; the full name stays in the tooltip.
    return (
        f"<span class='dcj-title' title='{_esc(name)}' style='flex:0 1 auto;min-width:0;"
        f"max-width:100%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;"
        f"font-weight:bold'>{_esc(name)}</span>"
    )


def _card_style(state: str) -> str:
    # A wrapping row: when the output area is narrow, the parts flow onto new lines
    # instead of being squeezed (a 0 px bar) or pushed out of view.
    return (
        f"display:flex;flex-wrap:wrap;align-items:center;gap:2px 10px;max-width:100%;"
        f"box-sizing:border-box;border-left:4px solid {COLOURS.get(state, COLOURS['queued'])};"
        f"padding:2px 8px;{_FONT};{_TEXT}"
    )


# -- a job or a cell ---------------------------------------------------------


@dataclass
class JobState:
    """What the job widget shows; ``state`` is one of the keys of ``COLOURS``."""

    name: str
    state: str
    elapsed: float = 0.0
    worker: str | None = None  # the worker's name (or address, if it has no name)
    dashboard: str | None = None
    detail: str = ""  # result preview, or the error's one-line summary
    awaiting_result: bool = False  # finished, but the preview waits for the result to arrive
    note: str = ""  # e.g. its worker has not answered for a while (``core.frozen.note``)

    @property
    def finished(self) -> bool:
        return self.state in ("finished", "failed", "cancelled") and not self.awaiting_result

    def headline(self) -> str:
        where = f" on {short_worker(self.worker)}" if self.worker else ""
        return f"{self.state}{where}"


def job_state(
    handle: Any, worker: str | None = None, dashboard: str | None = None, fetch: bool = True
) -> JobState:
    """Read a ``JobFuture``-like handle through ``snapshot()``, which never blocks.

    With ``fetch=True`` a finished result (or error) not here yet is fetched in
    the background (``prefetch()``) and shown on a later refresh; with
    ``fetch=False`` the preview waits for the caller's own wait to fetch it,
    so a large result is never transferred twice.
    """
    snap = handle.snapshot()
    state = {
        "pending": "running" if worker else "queued",
        "running": "running",
        "finished": "finished",
        "error": "failed",
        "cancelled": "cancelled",
    }.get(snap.status, snap.status)
    detail = ""
    awaiting = False
    if snap.error is not None and state in ("finished", "failed"):
        # e.g. the result could not be unpickled here, or the task failed
        state, detail = "failed", _summary(snap.error)
    elif state == "finished" and snap.has_value:
        has_result = getattr(handle, "has_result", True)  # a cell may end with a statement
        text = short_repr(snap.value) if has_result else ""
        detail = f"→ {text}" if text else ""
    elif state in ("finished", "failed"):
        awaiting = True  # the preview or the error is not here yet
        if fetch:
            handle.prefetch()
    return JobState(
        name=display_name(handle),
        state=state,
        elapsed=time.monotonic() - snap.submitted_at,
        worker=worker if state == "running" else None,
        dashboard=dashboard,
        detail=detail,
        awaiting_result=awaiting,
    )


def _summary(exc: BaseException) -> str:
    from dc_jupyter.core.futures import format_exception_summary

    return format_exception_summary(exc)


def job_text(s: JobState) -> str:
    line = f"{s.name}: {s.headline()}, {duration(s.elapsed)}"
    line = f"{line} {s.detail}" if s.detail else line
    return f"{line} · {s.note}" if s.note else line


def _note_html(note: str) -> str:
    # Spelled out in words with a symbol, like the state: never colour alone.
    return (
        f"<span class='dcj-note' role='status' style='min-width:0;overflow-wrap:anywhere'>"
        f"<span aria-hidden='true'>⚠</span> {_esc(note)}</span>"
    )


def job_html(s: JobState) -> str:
    parts = [
        _title_html(s.name),
        _state_html(s.state, s.headline()),
        f"<span class='dcj-elapsed' style='white-space:nowrap'>{duration(s.elapsed)}</span>",
    ]
    if s.detail:
        parts.append(
            f"<code class='dcj-detail' style='min-width:0;overflow-wrap:anywhere;{_TEXT};"
            f"background:none'>{_esc(s.detail)}</code>"
        )
    if s.note:
        parts.append(_note_html(s.note))
    if s.dashboard:
        parts.append(
            f"<a class='dcj-link' href='{_esc(s.dashboard)}' target='_blank' "
            f"rel='noopener' style='{_LINK}'>dashboard</a>"
        )
    return (
        f"<div class='dcj-job' data-state='{s.state}' style='{_card_style(s.state)}'>"
        f"{''.join(parts)}</div>"
    )


def lazy_job_html(name: str, arguments: str) -> str:
    """The card of a ``Job`` not sent yet."""
    return (
        f"<div class='dcj-job' data-state='not sent' style='{_card_style('not sent')}'>"
        f"<span><b>{_esc(name)}</b>(<code>{_esc(arguments)}</code>)</span>"
        f"{_state_html('not sent', 'not sent')}"
        "<small>(<code>.compute()</code> runs it, <code>.submit()</code> starts it)</small></div>"
    )


#: Why a view shows no final state: saved while running, or the kernel stopped.
SAVED, KERNEL_STOPPED = "when this output was saved", "when the kernel stopped"


def unfinished_text(name: str, when: str = SAVED) -> str:
    """What a live view's output says if it is saved (or the kernel ends) before
    the work ends: never a made-up state such as "queued · 0.0 s"."""
    return f"{name}: not finished {when} (run the cell again to see it)"


def unfinished_html(name: str, when: str = SAVED) -> str:
    short = "not finished when saved" if when == SAVED else f"not finished {when}"
    return (
        f"<div class='dcj-job' data-state='unfinished' style='{_card_style('queued')}'>"
        f"{_title_html(name)}{_state_html('unfinished', html.escape(short))}"
        "<small>run the cell again to see it</small></div>"
    )


# -- a map or a sweep ----------------------------------------------------------

#: No time left is shown before this many seconds and this share of the items:
#: an early rate (start-up, first batches) says little about the rest.
ESTIMATE_AFTER_SECONDS = 2.0
ESTIMATE_AFTER_SHARE = 0.05


@dataclass
class MapState:
    """What the map widget shows, in items."""

    name: str
    total: int
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0  # items being computed now: at most one per busy worker thread
    elapsed: float = 0.0
    per_worker: dict[str, int] = field(default_factory=dict)  # by worker name (or address)
    note: str = ""  # e.g. a worker running it has not answered for a while

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def queued(self) -> int:
        """Items sent or not, waiting for a thread (a batch's later items included)."""
        return max(0, self.total - self.ended - self.running)

    @property
    def finished(self) -> bool:
        return self.ended >= self.total

    @property
    def state(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.failed and self.finished:
            return "failed"
        if self.finished:
            return "finished"
        return "running" if self.ended or self.running else "queued"

    @property
    def rate(self) -> float | None:
        """Items finished (successfully) per second so far; failures are not throughput."""
        return self.done / self.elapsed if self.elapsed > 0 and self.done else None

    @property
    def time_left(self) -> float | None:
        """Estimated from the items computed so far, once there are enough of them."""
        computed = self.done + self.failed
        if (
            self.finished
            or self.cancelled
            or self.elapsed < ESTIMATE_AFTER_SECONDS
            or computed < max(1, ESTIMATE_AFTER_SHARE * self.total)
        ):
            return None
        return self.elapsed * (self.total - self.ended) / computed


def map_state(handle: Any, names: dict[str, str] | None = None) -> MapState:
    """Read a ``MapFuture``-like handle through ``progress()`` only (cheap by contract).

    ``names`` maps worker addresses to worker names (``monitor.worker_names``).
    """
    p = handle.progress()
    started = p.started_at or time.monotonic()
    # Items running now: one per running task (a batch runs its items one after
    # another on one thread), never the whole batch.
    running = getattr(p, "running_tasks", None)
    if running is None:
        running = p.running
    per_worker: dict[str, int] = {}
    for address, count in (p.per_worker or {}).items():
        label = short_worker(address, names)
        per_worker[label] = per_worker.get(label, 0) + count
    return MapState(
        name=display_name(handle),
        total=p.total,
        done=p.done,
        failed=p.failed,
        cancelled=p.cancelled,
        running=min(running, max(0, p.total - p.done - p.failed - p.cancelled)),
        elapsed=time.monotonic() - started,
        per_worker=per_worker,
    )


def map_counts(s: MapState) -> str:
    """``37/200 done · running 2 · queued 161 · failed 1 · 45.1/s · 3.9 s left · 4.2 s``;
    compact when ended (``200/200 done · 45.1/s · in 4.4 s``)."""
    parts = [f"{number(s.done)}/{number(s.total)} done"]
    if not s.finished and not s.cancelled:
        parts.append(f"running {number(s.running)}")
        parts.append(f"queued {number(s.queued)}")
    if s.failed:
        parts.append(f"failed {number(s.failed)}")
    if s.cancelled:
        parts.append(f"cancelled {number(s.cancelled)}")
    if s.rate:
        parts.append(rate(s.rate))
    if s.time_left is not None:
        parts.append(f"{duration(s.time_left)} left")
    parts.append(("in " if s.finished else "") + duration(s.elapsed))
    if s.note and not s.finished:
        parts.append(s.note)
    return " · ".join(parts)


def per_worker_text(per_worker: dict[str, int], limit: int = 8) -> str:
    """``w-0 ×120, w-1 ×80`` (busiest first), or ``""`` when nothing is known."""
    if not per_worker:
        return ""
    ranked = sorted(per_worker.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = [f"{short_worker(w)} ×{number(n)}" for w, n in ranked[:limit]]
    if len(ranked) > limit:
        shown.append(f"… {number(len(ranked) - limit)} more")
    return ", ".join(shown)


def map_text(s: MapState) -> str:
    text = f"{s.name}: {s.state}, {map_counts(s)}"
    workers = per_worker_text(s.per_worker)
    return f"{text}\n  per worker: {workers}" if workers else text


def bar_html(s: MapState) -> str:
    """The bar: done, failed and cancelled as separate segments, in an element with
    ``role="progressbar"`` and its value, so screen readers read it too."""
    total = max(s.total, 1)
    segments = []
    for kind, count in (("finished", s.done), ("failed", s.failed), ("cancelled", s.cancelled)):
        if count:
            # A 2 px floor: 1 failure in 100,000 must still be seen.
            segments.append(
                f"<span class='dcj-seg' data-kind='{kind}' title='{kind} {number(count)}' "
                f"style='display:block;width:{100.0 * count / total:.1f}%;min-width:2px;"
                f"height:100%;background:{COLOURS[kind]}'></span>"
            )
    summary = f"{number(s.ended)} of {number(s.total)} items ended"
    return (
        f"<span class='dcj-bar' role='progressbar' aria-label='{_esc(s.name)} progress' "
        f"aria-valuemin='0' aria-valuemax='{s.total}' aria-valuenow='{s.ended}' "
        f"aria-valuetext='{_esc(summary)}' title='{_esc(summary)}' "
        f"style='display:flex;flex:1 1 160px;min-width:120px;max-width:360px;height:10px;"
        f"background:{_TRACK};border-radius:2px;overflow:hidden'>{''.join(segments)}</span>"
    )


def map_html(s: MapState) -> str:
    counts = map_counts(s)
    workers = per_worker_text(s.per_worker)
    workers_html = (
        f"<span class='dcj-workers' title='per worker: {_esc(workers)}' style='flex:1 1 100%;"
        f"min-width:0;overflow-wrap:anywhere'>per worker: {_esc(workers)}</span>"
        if workers
        else ""
    )
    return (
        f"<div class='dcj-map' data-state='{s.state}' style='{_card_style(s.state)}'>"
        f"{_title_html(s.name)}{_state_html(s.state, s.state)}{bar_html(s)}"
        f"<span class='dcj-counts' title='{_esc(counts)}' style='flex:1 1 14em;min-width:0;"
        f"overflow-wrap:anywhere'>{_esc(counts)}</span>{workers_html}</div>"
    )
