"""The widgets in a real browser: JupyterLab on loopback, Debian's chromium, Playwright.

One JupyterLab session (a module fixture) runs a notebook of jobs and maps,
measures what the page shows while and after they run (numbers, layout at
700 px, contrast in the light and dark themes, the accessibility role), saves
the notebook, reopens it without running it and renders it with nbconvert
offline. Each test then asserts one of those findings.

Skips with a reason when chromium or Playwright is missing, and fails instead
when ``DC_JUPYTER_REQUIRE_BROWSER=1`` (as in ``.ci/run``). Screenshots go to
``test-artifacts/`` (``browser-failure.png`` when it fails; ``widgets.png`` and
``widgets-dark.png`` when it passes: the README's pictures are those).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("DC_JUPYTER_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

CELLS = [
    """\
import time
from dc_jupyter import compute_this

@compute_this
def square(x):
    time.sleep(0.2)
    return x * x

@compute_this
def fast(x):
    time.sleep(0.005)
    return x

@compute_this
def partial(x):
    if x % 6 == 5:
        raise ValueError(x)
    return x

@compute_this
def chatty(n):
    for i in range(n):
        time.sleep(0.5)
        print(f"late line {i}")
    return n""",
    "square(3).compute()",
    "total = sum(square.map(range(30)).compute())\ntotal",
    "failures = partial.map(range(30)).compute(errors='return')\n"
    "sum(isinstance(f, ValueError) for f in failures)",
    "len(fast.map(range(2000)).compute())",
    # Prints after its cell ended (nothing waits for it): shown in this cell.
    "late = chatty(4).submit()\n'sent'",
    # Long enough (3,000 × 0.2 s on two threads) to still run while the page is
    # measured on a loaded machine; the test cancels it.
    "sweep = square.map(range(3000)).submit()\nsweep",
]
#: Index of the cells above, as the page's prompts count them.
MAP_CELL, FAST_CELL, LATE_CELL = 2, 4, 5
#: What the late cell shows once the job has printed everything.
LATE_LINES = "".join(f"late line {i}\n" for i in range(4))


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install chromium, as .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    for module in ("jupyterlab", "nbconvert"):  # run as `python -m ...` below
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Before any cluster starts: skip (or fail) when there is no browser to drive."""
    reason = _browser_missing()
    if reason:
        if os.environ.get("DC_JUPYTER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DC_JUPYTER_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_env(home: Path, cluster_address: str) -> dict:
    return {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local/share/jupyter/runtime"),
        "IPYTHONDIR": str(home / ".ipython"),
        "DASK_SCHEDULER_ADDRESS": cluster_address,
        "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
    }


class Lab:
    """JupyterLab on loopback in a temp home; kernels use the session cluster."""

    def __init__(self, root: Path, cluster_address: str) -> None:
        self.root = root
        home = root / "home"
        self.env = _lab_env(home, cluster_address)
        # No "get Jupyter news?" toast (and no request for news): it would cover the widgets.
        notification = (
            home / "lab-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
        )
        notification.parent.mkdir(parents=True)
        notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
        self.token, port = uuid.uuid4().hex, _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser",
             f"--ServerApp.token={self.token}", f"--port={port}", "--ip=127.0.0.1",
             "--allow-root", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(root / "lab.log", "wb"),
            start_new_session=True,  # its own process group: stopped with its kernels below
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError((root / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.2)

    def url(self, name: str) -> str:
        return f"{self.base}/lab/tree/{name}?reset&token={self.token}"

    def stop(self) -> None:
        os.killpg(self.server.pid, signal.SIGTERM)
        try:
            self.server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, path)


def open_notebook(page, url: str, kernel: bool = True) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content", timeout=300_000)
    if kernel:
        page.wait_for_function(
            """() => { const k = window.jupyterapp?.shell?.currentWidget?.sessionContext
                           ?.session?.kernel;
                       return k && k.connectionStatus === 'connected' && k.status === 'idle'; }""",
            timeout=300_000,
        )


# -- what the page shows, computed in the page ------------------------------------------

#: Per map card: its title, state, counts text and bar value; and whether a cell is busy.
SAMPLE_JS = """() => {
  const prompts = [...document.querySelectorAll('.jp-Cell .jp-InputPrompt')];
  const cards = [...document.querySelectorAll('.jp-OutputArea-output .dcj-map')].map(c => ({
    title: c.querySelector('.dcj-title')?.textContent,
    state: c.dataset.state,
    counts: c.querySelector('.dcj-counts')?.textContent,
    now: Number(c.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow')),
  }));
  return {busy: prompts.map(p => p.textContent.includes('*')), cards};
}"""

#: WCAG 2 contrast of every text in the dc_jupyter outputs (and the Cancel button)
#: against what is really behind it: colours parsed from the computed style,
#: translucent text and backgrounds composited over the layers below.
CONTRAST_JS = """() => {
  const parse = c => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom) => [0, 1, 2].map(i => top[i] * top[3] + bottom[i] * (1 - top[3]))
                                         .concat([1]);
  const background = el => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let bg = [255, 255, 255, 1];
    for (const layer of layers.reverse()) bg = over(layer, bg);
    return bg;
  };
  const lum = c => {
    const [r, g, b] = c.slice(0, 3).map(v => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const found = [];
  const scope = [...document.querySelectorAll(
    '.jp-OutputArea-output .dcj-map, .jp-OutputArea-output .dcj-job')];
  const buttons = [...document.querySelectorAll('.jp-OutputArea-output button')]
    .filter(b => b.offsetParent);
  for (const root of scope) {
    for (const el of [root, ...root.querySelectorAll('*')]) {
      const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
      if (own && el.offsetParent) found.push(el);
    }
  }
  for (const b of buttons) found.push(b);
  return found.map(el => {
    const bg = background(el);
    const fg = over(parse(getComputedStyle(el).color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    return {text: el.textContent.trim().slice(0, 40), ratio: (hi + 0.05) / (lo + 0.05)};
  });
}"""

#: At a narrow width: the live map's bar, its Cancel button and the output area
#: around it, and every text that overflows its box without a tooltip saying it all.
NARROW_JS = """() => {
  const live = [...document.querySelectorAll('.jp-OutputArea-output .dcj-map')]
    .find(c => c.dataset.state === 'running' || c.dataset.state === 'queued');
  const area = live.closest('.jp-OutputArea-output');
  const button = [...area.querySelectorAll('button')].find(b => b.offsetParent);
  const rect = e => { const r = e.getBoundingClientRect();
                      return {left: r.left, right: r.right, width: r.width}; };
  const clipped = [];
  for (const root of document.querySelectorAll('.jp-OutputArea-output .dcj-map, '
                                                + '.jp-OutputArea-output .dcj-job')) {
    for (const el of [root, ...root.querySelectorAll('*')]) {
      if (!el.offsetParent || !el.textContent.trim()) continue;
      const over = el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0;
      if (over && el.title !== el.textContent) clipped.push(el.textContent.slice(0, 60));
    }
  }
  return {viewport: window.innerWidth, bar: rect(live.querySelector('[role=progressbar]')),
          button: button ? rect(button) : null, area: rect(area), clipped,
          filebrowser: !!document.querySelector('#filebrowser:not(.lm-mod-hidden)')};
}"""

#: Each dc_jupyter output: its state, the widths of its bar's segments by kind.
FINAL_JS = """() => [...document.querySelectorAll('.dcj-map, .dcj-job')].map(c => ({
  kind: c.className, state: c.dataset.state,
  title: c.querySelector('.dcj-title')?.textContent,
  role: c.querySelector('[role=progressbar]') ? {
    now: c.querySelector('[role=progressbar]').getAttribute('aria-valuenow'),
    max: c.querySelector('[role=progressbar]').getAttribute('aria-valuemax')} : null,
  segments: Object.fromEntries([...c.querySelectorAll('.dcj-seg')].map(
    s => [s.dataset.kind, s.getBoundingClientRect().width])),
}))"""


#: The text each cell's output area shows, in the order of the cells.
OUTPUTS_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(
  c => c.querySelector('.jp-OutputArea')?.innerText ?? '')"""


def _set_theme(page, name: str, light: bool) -> None:
    page.evaluate(f"() => window.jupyterapp.commands.execute('apputils:change-theme', "
                  f"{{theme: '{name}'}})")  # fmt: skip
    page.wait_for_function(
        f"() => document.body.dataset.jpThemeLight === '{str(light).lower()}'", timeout=120_000
    )
    time.sleep(1.0)  # the theme's stylesheet applies after the flag


def _run_session(lab: Lab, client, found: dict) -> None:
    from playwright.sync_api import sync_playwright

    write_notebook(lab.root / "widgets.ipynb", CELLS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(120_000)  # generous: 2 shared cores
        try:
            found["step"] = "opening the notebook"
            open_notebook(page, lab.url("widgets.ipynb"))
            # Not awaited: the command's promise only settles when every cell has run.
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            found["step"] = "running the cells"
            samples = []
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                sample = page.evaluate(SAMPLE_JS)
                samples.append(sample)
                if page.get_by_role("button", name="Cancel").count():  # the sweep's, shown
                    break
                time.sleep(0.1)
            found["samples"] = samples

            found["step"] = "waiting for the live sweep"
            # The displayed .submit() handle runs (300 × 0.2 s): measure while it is live.
            cancel = page.get_by_role("button", name="Cancel")
            cancel.wait_for(timeout=120_000)
            page.wait_for_function(
                """() => [...document.querySelectorAll('.dcj-map')].some(
                       c => c.dataset.state === 'running'
                            && Number(c.querySelector('[role=progressbar]')
                                       .getAttribute('aria-valuenow')) > 0)""",
                timeout=120_000,
            )
            found["step"] = "narrow window"
            # A narrow window with the file browser open.
            page.set_viewport_size({"width": 700, "height": 900})
            page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")
            time.sleep(1.0)
            # (The live HTML is redrawn ten times a second: scroll by the button.)
            cancel.scroll_into_view_if_needed()
            found["narrow"] = page.evaluate(NARROW_JS)
            page.screenshot(path=str(ARTIFACTS / "widgets-700px.png"))
            page.set_viewport_size({"width": 1100, "height": 900})

            found["step"] = "measuring contrast"
            found["contrast light"] = page.evaluate(CONTRAST_JS)
            page.locator(".jp-NotebookPanel").screenshot(path=str(ARTIFACTS / "widgets.png"))
            _set_theme(page, "JupyterLab Dark", light=False)
            found["contrast dark"] = page.evaluate(CONTRAST_JS)
            page.locator(".jp-NotebookPanel").screenshot(path=str(ARTIFACTS / "widgets-dark.png"))
            _set_theme(page, "JupyterLab Light", light=True)

            found["step"] = "cancelling"
            # Cancel really cancels the remote work, and the output ends static.
            cancel.click()
            page.locator(".dcj-map[data-state='cancelled']").wait_for(timeout=120_000)
            found["square tasks gone"] = _no_square_tasks_running(client)
            found["final"] = page.evaluate(FINAL_JS)

            found["step"] = "reading the late output"
            page.wait_for_function(f"() => ({OUTPUTS_JS})()[{LATE_CELL}].includes('late line 3')")
            found["outputs"] = page.evaluate(OUTPUTS_JS)

            found["step"] = "saving and reopening"
            # Save as JupyterLab does by default, then reopen without running anything.
            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            page.wait_for_function(
                "() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                timeout=120_000,
            )
            saved = lab.root / "widgets.ipynb"
            found["saved"] = json.loads(saved.read_text())
            shutil.copy(saved, lab.root / "reopened.ipynb")
            open_notebook(page, lab.url("reopened.ipynb"), kernel=False)
            page.wait_for_selector(".jp-OutputArea-output .dcj-job", timeout=120_000)
            time.sleep(2.0)  # any widget view would have tried to render by now
            found["reopened"] = page.evaluate(FINAL_JS)
            found["reopened text"] = page.locator(".jp-NotebookPanel").inner_text()

            found["step"] = "nbconvert"
            # nbconvert's HTML, opened offline: nothing may load from the network.
            html_dir = lab.root / "html"
            subprocess.run(
                [sys.executable, "-m", "nbconvert", "--to", "html", "--output-dir",
                 str(html_dir), str(saved)],
                env=lab.env, check=True, capture_output=True, timeout=180,
            )  # fmt: skip
            offline = browser.new_context(offline=True)
            html_page = offline.new_page()
            html_page.goto((html_dir / "widgets.html").as_uri())
            found["nbconvert"] = html_page.evaluate(FINAL_JS)
            found["nbconvert text"] = html_page.inner_text("body")
            offline.close()
        except BaseException as exc:
            try:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), timeout=120_000)
            except Exception as shot:  # the failure itself matters more than its picture
                exc.add_note(f"(no failure screenshot: {shot})")
            exc.add_note(f"browser session: failed while {found.get('step')!r}")
            raise
        finally:
            browser.close()


@pytest.fixture(scope="module")
def session(browser_ready, tmp_path_factory, cluster, client):
    """Everything the browser saw in one JupyterLab session (see ``_run_session``)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lab = Lab(tmp_path_factory.mktemp("lab"), cluster.address)
    found: dict = {}
    try:
        _run_session(lab, client, found)
    finally:
        lab.stop()
    return found


def _cards(found: dict, key: str, title: str) -> list[dict]:
    return [c for c in found[key] if c["title"] == title]


def _no_square_tasks_running(client, timeout: float = 15) -> bool:
    from conftest import wait_until

    return wait_until(
        lambda: (
            not any(
                str(key).startswith("square-")
                for keys in client.processing().values()
                for key in keys
            )
        ),
        timeout=timeout,
    )


# -- the tests ---------------------------------------------------------------------------


def test_the_map_bar_moves_while_its_cell_runs(session):
    seen = {
        s["cards"][0]["now"]
        for s in session["samples"]
        if s["cards"] and s["busy"][MAP_CELL] and 0 < s["cards"][0]["now"] < 30
    }
    assert len(seen) >= 3, f"bar values seen while running: {seen}"


def test_running_is_at_most_the_worker_threads(session):
    """2,000 items of 5 ms on two one-thread workers: at most 2 run at once."""
    running = [
        int(m.group(1))
        for s in session["samples"]
        for card in s["cards"]
        if card["title"] == "fast.map" and card["state"] == "running"
        for m in [re.search(r"running (\d+)", card["counts"] or "")]
        if m
    ]
    assert running, "the fast map was never seen running"
    assert max(running) <= 2, running
    queued = [
        card["counts"]
        for s in session["samples"]
        for card in s["cards"]
        if card["title"] == "fast.map" and "queued" in (card["counts"] or "")
    ]
    assert queued, "queued items are shown apart"


def test_progressbar_role_and_value(session):
    (done,) = _cards(session, "final", "square.map")[:1]
    assert done["role"] == {"now": "30", "max": "30"}, done
    (fast,) = _cards(session, "final", "fast.map")
    assert fast["role"] == {"now": "2000", "max": "2000"}, fast


def test_failed_items_have_their_own_visible_segment(session):
    (partial,) = _cards(session, "final", "partial.map")
    assert partial["state"] == "failed"
    assert partial["segments"].get("finished", 0) >= 1, partial
    assert partial["segments"].get("failed", 0) >= 1, partial
    # 25 done, 5 failed: the failed part is about a fifth of the done part
    ratio = partial["segments"]["failed"] / partial["segments"]["finished"]
    assert 0.1 < ratio < 0.3, partial


def test_narrow_window_wraps_without_clipping(session):
    narrow = session["narrow"]
    assert narrow["viewport"] == 700
    assert narrow["bar"]["width"] >= 100, narrow
    button, area = narrow["button"], narrow["area"]
    assert button is not None, "no Cancel button on the live map"
    assert 0 <= button["left"] and button["right"] <= narrow["viewport"], narrow
    assert area["left"] - 1 <= button["left"] and button["right"] <= area["right"] + 1, narrow
    assert not narrow["clipped"], narrow


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_text_has_contrast(session, theme):
    found = session[f"contrast {theme}"]
    assert len(found) >= 10, found  # states, counts, titles, link, button...
    low = [f for f in found if f["ratio"] < 4.5]
    assert not low, low


def test_cancel_stops_the_remote_work(session):
    assert session["square tasks gone"], "square tasks still run after Cancel"
    (sweep,) = [c for c in session["final"] if c["state"] == "cancelled"]
    assert sweep["segments"].get("cancelled", 0) >= 1


def test_late_output_shows_in_the_cell_that_submitted_it(session):
    # Printed by a job after its cell ended, while the kernel was idle: in that
    # cell, in order, one line after another (not double-spaced), nowhere else.
    outputs = session["outputs"]
    assert LATE_LINES in outputs[LATE_CELL], outputs[LATE_CELL]
    assert [i for i, text in enumerate(outputs) if "late line" in text] == [LATE_CELL], outputs


def _assert_all_final(cards: list[dict], text: str) -> None:
    assert "Error displaying widget" not in text
    states = sorted(c["state"] for c in cards)
    # square(3), three maps finished or failed, and the cancelled sweep
    assert states == ["cancelled", "failed", "finished", "finished", "finished"], cards
    assert "→ 9" in text and "30/30 done" in text and "2,000/2,000 done" in text
    assert LATE_LINES in text, "the late output was not kept"


def test_reopened_notebook_shows_final_states(session):
    saved = session["saved"]
    views = [
        o for c in saved["cells"] for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]  # fmt: skip
    assert not views, "a finished output was saved as a widget view"
    _assert_all_final(session["reopened"], session["reopened text"])


def test_nbconvert_html_offline_shows_final_states(session):
    _assert_all_final(session["nbconvert"], session["nbconvert text"])
