"""The widgets in a real browser: JupyterLab on loopback, Debian's chromium, Playwright.

Skips with a reason when chromium or Playwright is missing, and fails instead
when ``DC_JUPYTER_REQUIRE_BROWSER=1`` (as in ``.ci/run``). Screenshots go to
``test-artifacts/`` (``browser-failure.png`` when it fails, ``widgets.png``
when it passes: the README's picture is that one).
"""

from __future__ import annotations

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
    return x * x""",
    "square(3).compute()",
    "total = sum(square.map(range(30)).compute())\ntotal",
    "sweep = square.map(range(300)).submit()\nsweep",
]


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install chromium, as .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    if shutil.which("jupyter-lab") is None and shutil.which("jupyter") is None:
        return "jupyterlab is not installed"
    return None


@pytest.fixture
def browser_ready():
    reason = _browser_missing()
    if reason:
        if os.environ.get("DC_JUPYTER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DC_JUPYTER_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, cluster, browser_ready):
    """JupyterLab on loopback in a temp home; kernels use the session cluster."""
    home = tmp_path / "home"
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local/share/jupyter/runtime"),
        "IPYTHONDIR": str(home / ".ipython"),
        "DASK_SCHEDULER_ADDRESS": cluster.address,
        "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
    }
    # No "get Jupyter news?" toast (and no request for news): it would cover the widgets.
    notification = (
        home / "lab-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
    )
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nbformat.write(nb, tmp_path / "widgets.ipynb")
    token, port = uuid.uuid4().hex, _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.token={token}",
         f"--port={port}", "--ip=127.0.0.1", "--allow-root", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "wb"),
        start_new_session=True,  # its own process group: stopped with its kernels below
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        yield f"{base}/lab/tree/widgets.ipynb?reset&token={token}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# The map cell (the third) shows "[*]:" while it runs. (The kernel's status is no
# guide: control-channel requests answered meanwhile report it "idle".)
WIDTHS_JS = """() => {
  const prompt = document.querySelectorAll('.jp-Cell .jp-InputPrompt')[2];
  const bars = [...document.querySelectorAll('.jupyter-widgets.widget-hprogress .progress-bar')];
  return {busy: !!prompt && prompt.textContent.includes('*'), widths: bars.map(b => b.style.width)};
}"""


def _percent(width: str) -> float | None:
    match = re.fullmatch(r"([\d.]+)%", width or "")
    return float(match.group(1)) if match else None


def test_widgets_move_in_jupyterlab_and_end_final(lab, client):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        try:
            page.goto(lab)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content", timeout=60_000)
            page.wait_for_function(
                """() => { const k = window.jupyterapp?.shell?.currentWidget?.sessionContext
                               ?.session?.kernel;
                           return k && k.connectionStatus === 'connected' && k.status === 'idle'; }""",
                timeout=60_000,
            )
            # Not awaited: the command's promise only settles when every cell has run.
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # The map cell (the first bar) moves while the kernel is busy with it.
            intermediate: set[float] = set()
            samples = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                sample = page.evaluate(WIDTHS_JS)
                samples.append(sample)
                first = _percent(sample["widths"][0]) if sample["widths"] else None
                if first is not None and 0 < first < 100 and sample["busy"]:
                    intermediate.add(first)
                if first == 100:
                    break
                time.sleep(0.05)
            assert len(intermediate) >= 3, (
                f"bar widths seen while running: {intermediate} {samples}"
            )
            page.wait_for_function(
                """() => { const b = document.querySelector(
                               '.jupyter-widgets.widget-hprogress .progress-bar');
                           return b && b.style.width === '100%'; }""",
                timeout=30_000,
            )
            job = page.locator(".dcj-job[data-state='finished']").first
            job.wait_for(timeout=30_000)
            assert "→ 9" in job.inner_text()
            assert "dashboard" in job.inner_text()

            # The displayed .submit() handle: its Cancel button really cancels remote work.
            cancel = page.get_by_role("button", name="Cancel")
            cancel.wait_for(timeout=30_000)
            page.wait_for_function(
                """() => { const bars = document.querySelectorAll(
                               '.jupyter-widgets.widget-hprogress .progress-bar');
                           return bars.length === 2 && parseFloat(bars[1].style.width) > 0; }""",
                timeout=30_000,
            )
            cancel.click()
            page.get_by_text("cancelled", exact=True).first.wait_for(timeout=30_000)
            assert _no_square_tasks_running(client), "square tasks still run after Cancel"
            news = page.get_by_role(
                "button", name="No", exact=True
            )  # JupyterLab's "get news?" toast
            if news.is_visible():
                news.click()
            page.locator(".jp-NotebookPanel").screenshot(path=str(ARTIFACTS / "widgets.png"))
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


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
