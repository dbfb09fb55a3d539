"""The workbench in a real browser: JupyterLab on loopback, headless Debian chromium, Playwright.

The notebook is copied to a temporary directory (JupyterLab autosaves what it runs), served by a
JupyterLab on 127.0.0.1 with a random free port and token, opened in headless chromium at
1366 px, and run. The sensitivity pick must show the busy state (class, disabled button,
progress bar) and end with a short summary; a bits slider moved with the keyboard must change
the EER and the histogram; after saving and reloading the tab on the running kernel, the
histogram's title, levels and bars and the DET's quantized line must still be the current ones.
At 1366 and 1920 px nothing of the workbench may overflow its output area or the window, and no
label may be cut; screenshots go to ``tests/artifacts/workbench_<width>.png``. Every wait is
bounded; JupyterLab is always stopped.

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
        f"--LabApp.app_settings_dir={REPO / 'jupyter' / 'settings'}",  # as `make lab`: no news
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
    const plots = Array.from(document.querySelectorAll('.svlab-histogram .js-plotly-plot'));
    if (plots.length !== 1 || !plots[0]._fullData || plots[0]._fullData.length < 2) return null;
    const plot = plots[0], bars = plot._fullData[0].y, levels = plot._fullData[1].x;
    return {title: plot.layout.title.text, levels: levels ? Array.from(levels).length : 0,
            count: bars ? Array.from(bars).reduce((a, b) => a + b, 0) : 0};
}"""
DET_LINES = """() => {
    const plot = document.querySelector('.svlab-det .js-plotly-plot');
    return plot && plot._fullData ? plot._fullData.map(t => [t.name, t.x ? t.x.length : 0]) : [];
}"""
OVERFLOW = """() => {
    const area = document.querySelector('.jp-OutputArea-output:has(.svlab-workbench)');
    const bench = area.querySelector('.svlab-workbench');
    const problems = [];
    for (const box of [area, bench]) {
        if (box.scrollWidth > box.clientWidth + 1)
            problems.push(`${box.className}: scrollWidth ${box.scrollWidth} > ${box.clientWidth}`);
    }
    for (const plot of bench.querySelectorAll('.js-plotly-plot')) {
        const r = plot.getBoundingClientRect();
        if (r.left < 0 || r.right > window.innerWidth || r.width < 200)
            problems.push(`plot ${r.left}-${r.right} (window ${window.innerWidth})`);
    }
    for (const label of bench.querySelectorAll('.widget-label, .widget-label-basic')) {
        if (label.scrollWidth > label.clientWidth + 1)
            problems.push(`label cut: ${label.textContent}`);
    }
    return problems;
}"""
WIDTHS = (1366, 1920)


def _run_notebook(page, url: str, token: str) -> None:
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
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not tracebacks, f"the notebook raised in the browser:\n{tracebacks[0][:2000]}"


def _check_width(page, width: int) -> None:
    """At ``width`` px: nothing overflows, no label is cut; a screenshot of the workbench."""
    page.set_viewport_size({"width": width, "height": 1100})
    page.wait_for_timeout(1500)  # plotly redraws its responsive plots on the resize
    page.locator(".svlab-workbench .svlab-layer-slider").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"workbench_{width}.png"))
    assert page.evaluate(OVERFLOW) == [], f"at {width} px"


def _layer_numel(title: str) -> int:
    """Weights of the layer a histogram title names, from the checkpoint the notebook loads."""
    from svlab.checkpoint import load_model

    model = load_model(REPO / "checkpoints" / "tutorial_resnet.pt")
    return dict(model.named_parameters())[title.split(":")[0]].numel()


@pytest.mark.slow
def test_workbench_runs_and_reacts_in_chromium(playwright_api, lab, tmp_path):
    url, token, log = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = playwright_api.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": WIDTHS[0], "height": 1100},
    )
    try:
        context.set_default_timeout(UPDATE_S * 1000)
        page = context.new_page()
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        _run_notebook(page, url, token)
        _check_width(page, WIDTHS[0])

        # a long action: busy class, disabled button, progress bar, then a short summary
        pick = page.locator(".svlab-workbench button", has_text="sensitivity pick").first
        pick.scroll_into_view_if_needed()
        pick.click()
        page.wait_for_selector(".svlab-busy", timeout=UPDATE_S * 1000)
        page.wait_for_function(
            "() => !!document.querySelector('.svlab-busy') && Array.from(document"
            ".querySelectorAll('.svlab-workbench .widget-button')).every(b => b.disabled)")
        page.wait_for_function(
            "() => { const p = document.querySelector('.svlab-progress');"
            " return p && getComputedStyle(p).visibility === 'visible'; }")
        page.wait_for_function(
            "() => /updated in \\d+\\.\\d\\d s/.test("
            "document.querySelector('.svlab-status').textContent)",
            timeout=NOTEBOOK_RUN_S * 1000)
        assert page.locator(".svlab-busy").count() == 0 and not pick.is_disabled()
        summary = page.locator(".svlab-message").first.inner_text()
        assert 0 < len(summary) < 300, summary

        eer_before = page.locator(".svlab-eer").first.inner_text()
        histogram_before = page.evaluate(HISTOGRAM)
        assert histogram_before is not None, "the histogram did not render"
        slider = page.locator(".svlab-layer-slider").first
        slider.scroll_into_view_if_needed()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        handle.press("Home")  # fp32 -> 1 bit: the largest change a slider can make
        page.wait_for_function(
            "(before) => { const e = document.querySelector('.svlab-eer');"
            " return e && e.textContent !== before; }",
            arg=eer_before,
        )
        page.wait_for_function(
            f"(before) => {{ const h = ({HISTOGRAM})();"
            " return h && h.title !== before.title && h.levels > 0; }",
            arg=histogram_before,
        )
        moved = page.evaluate(HISTOGRAM)
        assert "1 bit" in moved["title"] and moved["levels"] == 2
        assert moved["count"] == _layer_numel(moved["title"])
        eer_after = page.locator(".svlab-eer").first.inner_text()
        assert eer_after != eer_before

        # the same kernel, the tab reloaded: the figures show the state they had
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_timeout(1000)
        page.reload()
        page.wait_for_selector(".svlab-histogram .js-plotly-plot", timeout=SERVER_START_S * 1000)
        page.wait_for_function(f"() => ({HISTOGRAM})() !== null")
        reloaded = page.evaluate(HISTOGRAM)
        assert reloaded == moved, f"after reload {reloaded}, before {moved}"
        assert page.locator(".svlab-eer").first.inner_text() == eer_after
        lines = dict(page.evaluate(DET_LINES))
        assert lines.get("fp32", 0) > 1 and lines.get("quantized", 0) > 1, lines

        _check_width(page, WIDTHS[1])
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure.png"))
        print(f"JupyterLab log:\n{log.read_text()[-3000:]}")
        print("browser console:\n" + "\n".join(console[-40:]))
        raise
    finally:
        context.close()
