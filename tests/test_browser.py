"""The workbench in a real browser: JupyterLab on loopback, headless Debian chromium, Playwright.

The notebook is copied to a temporary directory (JupyterLab autosaves what it runs), served by a
JupyterLab on 127.0.0.1 with a random free port and token, opened in headless chromium, and run;
then a bits slider is moved with the keyboard and the EER text and the histogram must change.
A screenshot goes to ``tests/artifacts/``. Every wait is bounded; JupyterLab is always stopped.

Needs ``/usr/bin/chromium`` (``scripts/install_browser.sh``) and the ``playwright`` package (its
bundled driver only; no browser is downloaded). Outside CI the test skips when either is missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from svlab.course import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "07_workbench.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 90
NOTEBOOK_RUN_S = 300  # the notebook's own budget is 2 minutes on 2 free cores
UPDATE_S = 60
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run the browser test: `make test` installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install '.[dev]')")
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} is missing: run scripts/install_browser.sh")
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab serving a copy of the notebook: yields (base url, token, log file)."""
    if not NOTEBOOK.is_file():
        pytest.fail(f"{NOTEBOOK} is missing")
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    log = work / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
        f"--LabApp.workspaces_dir={work / 'workspaces'}",
        f"--LabApp.user_settings_dir={work / 'settings'}",
    ]
    if os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                request = urllib.request.Request(
                    f"{url}/api/status", headers={"Authorization": f"token {token}"}
                )
                with urllib.request.urlopen(request, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in {SERVER_START_S} s")
                time.sleep(0.5)
        yield url, token, log
    finally:
        stop_process_group(process)


KERNEL_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session
        && w.sessionContext.session.kernel;
    const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))
        .map(p => p.textContent);
    return !!kernel && kernel.status === 'idle' && prompts.length > 0
        && prompts.every(t => /\\[\\d+\\]/.test(t));
}"""
HISTOGRAM = """() => {
    const plots = Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p =>
        p.layout && p.layout.xaxis && p.layout.xaxis.title
        && p.layout.xaxis.title.text === 'weight value');
    if (plots.length !== 1 || !plots[0].data || plots[0].data.length < 2) return null;
    const plot = plots[0], levels = plot.data[1].x;
    return {title: plot.layout.title.text, levels: levels ? Array.from(levels).length : 0,
            tagged: !!plot.closest('.svlab-histogram')};
}"""


@pytest.mark.slow
def test_workbench_runs_and_reacts_in_chromium(playwright_api, lab, tmp_path):
    url, token, log = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = playwright_api.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1600, "height": 1100},
    )
    try:
        context.set_default_timeout(UPDATE_S * 1000)
        page = context.new_page()
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}&reset")
        page.wait_for_selector(".jp-Notebook", timeout=SERVER_START_S * 1000)
        page.wait_for_function(
            "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " return !!(w && w.sessionContext && w.sessionContext.session"
            " && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.status === 'idle'); }",
            timeout=SERVER_START_S * 1000,
        )
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(".svlab-eer", timeout=NOTEBOOK_RUN_S * 1000)
        page.wait_for_function(KERNEL_IDLE, timeout=NOTEBOOK_RUN_S * 1000, polling=500)
        errors = page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert not tracebacks, f"the notebook raised in the browser:\n{tracebacks[0][:2000]}"

        eer_before = page.locator(".svlab-eer").first.inner_text()
        histogram_before = page.evaluate(HISTOGRAM)
        assert histogram_before is not None, "the histogram FigureWidget did not render"

        slider = page.locator(".svlab-layer-slider").first
        slider.scroll_into_view_if_needed()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        handle.press("Home")  # fp32 -> 1 bit: the largest change a slider can make

        page.wait_for_function(
            "(before) => { const e = document.querySelector('.svlab-eer');"
            " return e && e.textContent !== before; }",
            arg=eer_before,
            timeout=UPDATE_S * 1000,
        )
        page.wait_for_function(
            f"(before) => {{ const h = ({HISTOGRAM})();"
            " return h && h.title !== before.title && h.levels > 0; }",
            arg=histogram_before,
            timeout=UPDATE_S * 1000,
        )
        eer_after = page.locator(".svlab-eer").first.inner_text()
        histogram_after = page.evaluate(HISTOGRAM)
        assert eer_after != eer_before
        assert "1 bit" in histogram_after["title"] and histogram_after["levels"] == 2

        page.locator(".svlab-numbers").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "workbench.png"))
        workbench = page.locator(".jp-OutputArea-output:has(.svlab-numbers)").first
        workbench.screenshot(path=str(ARTIFACTS / "workbench_widget.png"))
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure.png"))
        print(f"JupyterLab log:\n{log.read_text()[-3000:]}")
        print("browser console:\n" + "\n".join(console[-40:]))
        print(page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                            ".map(p => p.parentElement.parentElement.className)"))
        raise
    finally:
        context.close()
