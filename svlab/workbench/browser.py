"""The workbench as a learner meets it: JupyterLab on loopback, headless chromium, waits timed.

:func:`lab_server` serves a copy of a notebook (JupyterLab autosaves what it runs) on
127.0.0.1 with a random free port and token; :func:`open_chromium` opens Debian's chromium
through Playwright (its driver only; no browser is downloaded); :func:`run_notebook` runs every
cell. :func:`time_slider_moves` and :func:`time_mixed_precision` time what a learner waits for:
from the key press or click to the last figure drawn in the page, both figures replaced and the
status line updated. ``tests/test_browser.py`` and ``benchmarks/bench_widgets.py --browser``
use these, so the test and the benchmark time the same thing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from svlab.profiles import REPO_ROOT
from svlab.servers import free_port, stop_process_group, wait_for_answer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SERVER_START_S = 90
NOTEBOOK_RUN_S = 300  # the notebook's own budget is 2 minutes on 2 free cores
UPDATE_S = 60

# Before an action: mark the figures drawn now and remember the status line; a keydown or click
# (capture phase, so before the widget sees it) stamps the action's start. A figure is then
# drawn when JupyterLab has replaced its plot by a new one with its SVG, or plotly redrew it in
# place (plotly_afterplot), or its data is the same (an unchanged figure is not sent again).
# The status line comes last from the kernel, so by then every figure message has arrived.
MARK = """() => {
    if (!window.__svlabTiming) {
        window.__svlabTiming = true;
        for (const type of ['keydown', 'click'])
            document.addEventListener(type, () => { window.__svlabStart = performance.now(); },
                                      true);
    }
    for (const plot of document.querySelectorAll('.svlab-workbench .js-plotly-plot')) {
        plot.__svlabOld = true;  // replaced by a new plot, redrawn in place, or unchanged
        plot.__svlabData = plot.data;
        plot.__svlabRedrawn = false;
        if (!plot.__svlabListening && plot.on) {
            plot.__svlabListening = true;
            plot.on('plotly_afterplot', () => { plot.__svlabRedrawn = true; });
        }
    }
    window.__svlabStatus = document.querySelector('.svlab-status').textContent;
}"""
# Resolves, checked every 5 ms, once both figures are drawn and the status line reports the
# action: milliseconds since the start stamp. Rejects after ``timeout_ms``, saying what it
# still waited for.
REDRAWN = """(timeout_ms) => new Promise((resolve, reject) => {
    const waiting = () => {
        const plots = Array.from(
            document.querySelectorAll('.svlab-workbench .svlab-figure .js-plotly-plot'));
        const status = document.querySelector('.svlab-status').textContent;
        const missing = [];
        if (plots.length !== 2) missing.push(`${plots.length} figures`);
        if (status === window.__svlabStatus || !/updated in/.test(status))
            missing.push(`status "${status}"`);
        const drawn = p => p.__svlabOld ? p.__svlabRedrawn || p.data === p.__svlabData
                                        : !!(p._fullLayout && p.querySelector('.main-svg'));
        plots.filter(p => !drawn(p)).forEach(p => missing.push(
            `${p.closest('.svlab-figure').className.match(/svlab-(histogram|det|memory)/)[0]}`
            + ' not redrawn'));
        return missing;
    };
    const tick = () => {
        const missing = waiting();
        if (missing.length === 0) resolve(performance.now() - window.__svlabStart);
        else if (performance.now() - window.__svlabStart > timeout_ms)
            reject(new Error(`no redraw after ${timeout_ms} ms: ${missing.join('; ')}`));
        else setTimeout(tick, 5);
    };
    tick();
})"""
KERNEL_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session
        && w.sessionContext.session.kernel;
    const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))
        .map(p => p.textContent);
    return !!kernel && kernel.status === 'idle' && prompts.length > 0
        && prompts.every(t => /\\[\\d+\\]/.test(t));
}"""


LAB_SETTINGS = f"--LabApp.app_settings_dir={REPO_ROOT / 'jupyter' / 'settings'}"  # no news


@contextmanager
def lab_server(
    notebook: Path | None, work: Path, settings: Sequence[str] = (LAB_SETTINGS,)
) -> Iterator[tuple[str, str, Path]]:
    """Serve ``work`` (a copy of ``notebook`` in it, if one is given) with JupyterLab on
    loopback, with ``settings`` (as ``make lab`` by default); yield ``(url, token, log)`` once
    it answers; always stop it (and its kernels).

    >>> with lab_server(Path("notebooks/07_workbench.ipynb"), Path("/tmp/lab")) as (url, _, _):
    ...     url.startswith("http://127.0.0.1:")  # doctest: +SKIP
    True
    """
    work.mkdir(parents=True, exist_ok=True)
    if notebook is not None:
        shutil.copy(notebook, work / notebook.name)
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
        f"--LabApp.user_settings_dir={work / 'settings'}", *settings,
    ]  # fmt: skip
    if os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        status = urllib.request.Request(f"{url}/api/status",
                                        headers={"Authorization": f"token {token}"})
        wait_for_answer(process, status, SERVER_START_S, "JupyterLab", log.read_text)
        yield url, token, log
    finally:
        stop_process_group(process)


@contextmanager
def open_chromium(playwright, profile: Path, width: int = 1366):
    """A headless chromium context (``profile``: its user data folder) at ``width`` x 1100 px,
    every wait bounded by ``UPDATE_S``; closed afterwards.

    >>> from playwright.sync_api import sync_playwright  # doctest: +SKIP
    >>> with sync_playwright() as api, open_chromium(api, Path("/tmp/p")) as context:
    ...     context.new_page().viewport_size["width"]  # doctest: +SKIP
    1366
    """
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_FLAGS),
        viewport={"width": width, "height": 1100},
    )
    context.set_default_timeout(UPDATE_S * 1000)
    try:
        yield context
    finally:
        context.close()


def run_notebook(page, url: str, token: str, name: str) -> None:
    """Open notebook ``name`` in JupyterLab, run all cells and wait until the kernel is idle
    with every cell numbered; raise if a cell printed a traceback.

    >>> run_notebook(page, url, token, "07_workbench.ipynb")  # doctest: +SKIP
    """
    page.goto(f"{url}/lab/tree/{name}?token={token}&reset")
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
    if tracebacks:
        raise RuntimeError(f"the notebook raised in the browser:\n{tracebacks[0][:2000]}")


def time_slider_moves(page, keys: Sequence[str]) -> list[float]:
    """Press each of ``keys`` on the first layer slider's handle, one move at a time; the
    seconds from each key press to the last figure drawn.

    >>> time_slider_moves(page, ["Home", "ArrowRight"])  # doctest: +SKIP
    [0.41, 0.38]
    """
    handle = page.locator(".svlab-layer-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    seconds = []
    for key in keys:
        page.evaluate(MARK)
        handle.focus()
        handle.press(key)
        seconds.append(page.evaluate(REDRAWN, UPDATE_S * 1000) / 1000)
    return seconds


def time_mixed_precision(page) -> float:
    """Click "mixed precision" (at the budget shown); the seconds to the last figure drawn.

    >>> time_mixed_precision(page)  # doctest: +SKIP
    3.2
    """
    button = page.locator(".svlab-workbench button", has_text="mixed precision").first
    button.scroll_into_view_if_needed()
    page.evaluate(MARK)
    button.click()
    return page.evaluate(REDRAWN, UPDATE_S * 1000) / 1000
