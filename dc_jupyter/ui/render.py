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

#: Colours of the states, shared by the HTML fallback and the widgets.
COLOURS = {
    "queued": "#6c757d",
    "running": "#0d6efd",
    "finished": "#198754",
    "failed": "#dc3545",
    "cancelled": "#b7791f",
    "not sent": "#6c757d",
}

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


def short_worker(address: str) -> str:
    """``tcp://10.0.0.5:40123`` -> ``10.0.0.5:40123``."""
    return address.split("://", 1)[-1]


# -- a job or a cell ---------------------------------------------------------


@dataclass
class JobState:
    """What the job widget shows; ``state`` is one of the keys of ``COLOURS``."""

    name: str
    state: str
    elapsed: float = 0.0
    worker: str | None = None
    dashboard: str | None = None
    detail: str = ""  # result preview, or the error's one-line summary
    awaiting_result: bool = False  # finished, but the preview waits for the result to arrive

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
    return f"{line} {s.detail}" if s.detail else line


def job_html(s: JobState) -> str:
    colour = COLOURS.get(s.state, "#6c757d")
    parts = [
        f"<b>{html.escape(s.name)}</b>",
        f"<span style='color:{colour};font-weight:bold' class='dcj-state'>"
        f"{html.escape(s.headline())}</span>",
        f"<span class='dcj-elapsed'>{duration(s.elapsed)}</span>",
    ]
    if s.detail:
        parts.append(
            f"<code class='dcj-detail' style='color:{colour}'>{html.escape(s.detail)}</code>"
        )
    if s.dashboard:
        parts.append(
            f"<a href='{html.escape(s.dashboard, quote=True)}' target='_blank' "
            "style='color:#0d6efd'>dashboard</a>"
        )
    line = " · ".join(parts)
    return (
        f"<div class='dcj-job' data-state='{s.state}' "
        f"style='border-left:4px solid {colour};padding:2px 8px;font-family:sans-serif;"
        f"font-size:13px'>{line}</div>"
    )


def lazy_job_html(name: str, arguments: str) -> str:
    """The card of a ``Job`` not sent yet."""
    colour = COLOURS["not sent"]
    return (
        f"<div class='dcj-job' data-state='not sent' style='border-left:4px solid {colour};"
        f"padding:2px 8px;font-family:sans-serif;font-size:13px'>"
        f"<b>{html.escape(name)}</b>(<code>{html.escape(arguments)}</code>) · "
        f"<span style='color:{colour}'>not sent</span> "
        "<small>(<code>.compute()</code> runs it, <code>.submit()</code> starts it)</small></div>"
    )


# -- a map or a sweep ----------------------------------------------------------


@dataclass
class MapState:
    """What the map widget shows, in items."""

    name: str
    total: int
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    elapsed: float = 0.0
    per_worker: dict[str, int] = field(default_factory=dict)
    stopped: bool = False  # no longer watched although not all items ended

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def finished(self) -> bool:
        return self.ended >= self.total

    @property
    def state(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.failed:
            return "failed"
        if self.finished:
            return "finished"
        return "running" if self.ended or self.running else "queued"

    @property
    def rate(self) -> float | None:
        """Items computed (done or failed, not cancelled) per second so far."""
        computed = self.done + self.failed
        return computed / self.elapsed if self.elapsed > 0 and computed else None

    @property
    def time_left(self) -> float | None:
        rate = self.rate
        return (self.total - self.ended) / rate if rate and not self.finished else None


def map_state(handle: Any) -> MapState:
    """Read a ``MapFuture``-like handle through ``progress()`` only (cheap by contract)."""
    p = handle.progress()
    started = p.started_at or time.monotonic()
    return MapState(
        name=display_name(handle),
        total=p.total,
        done=p.done,
        failed=p.failed,
        cancelled=p.cancelled,
        running=p.running,
        elapsed=time.monotonic() - started,
        per_worker=dict(p.per_worker or {}),
    )


def map_counts(s: MapState) -> str:
    """``37/200 · running 2 · failed 1 · 45.1/s · 3.9 s left · 4.2 s``; compact when ended."""
    parts = [f"{s.ended if s.finished else s.done}/{s.total}"]
    if s.finished:
        parts[0] = f"{s.done}/{s.total} done"
    if s.running and not s.finished:
        parts.append(f"running {s.running}")
    if s.failed:
        parts.append(f"failed {s.failed}")
    if s.cancelled:
        parts.append(f"cancelled {s.cancelled}")
    if s.rate:
        parts.append(f"{s.rate:,.1f}/s")
    if s.time_left is not None and not s.cancelled:
        parts.append(f"{duration(s.time_left)} left")
    parts.append(("in " if s.finished else "") + duration(s.elapsed))
    return " · ".join(parts)


def per_worker_text(per_worker: dict[str, int], limit: int = 8) -> str:
    """``a:10 ×120, b:11 ×80`` (busiest first), or ``""`` when nothing is known."""
    if not per_worker:
        return ""
    ranked = sorted(per_worker.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = [f"{short_worker(w)} ×{n}" for w, n in ranked[:limit]]
    if len(ranked) > limit:
        shown.append(f"… {len(ranked) - limit} more")
    return ", ".join(shown)


def map_text(s: MapState) -> str:
    text = f"{s.name}: {s.state}, {map_counts(s)}"
    workers = per_worker_text(s.per_worker)
    return f"{text}\n  per worker: {workers}" if workers else text


def map_html(s: MapState) -> str:
    colour = COLOURS.get(s.state, "#6c757d")
    percent = 100.0 * s.ended / s.total if s.total else 100.0
    workers = per_worker_text(s.per_worker)
    workers_html = (
        f"<div style='color:#6c757d'>per worker: {html.escape(workers)}</div>" if workers else ""
    )
    return (
        f"<div class='dcj-map' data-state='{s.state}' style='font-family:sans-serif;"
        f"font-size:13px;padding:2px 0'><b>{html.escape(s.name)}</b> "
        f"<span style='color:{colour};font-weight:bold'>{s.state}</span> "
        f"<span style='display:inline-block;width:200px;height:10px;background:#e9ecef;"
        f"vertical-align:middle'><span style='display:block;height:100%;"
        f"width:{percent:.1f}%;background:{colour}'></span></span> "
        f"{html.escape(map_counts(s))}{workers_html}</div>"
    )
