"""The workbench in a real browser: JupyterLab on loopback, headless Debian chromium, Playwright.

The notebook is served and run by :mod:`svlab.workbench.browser` (a copy in a temporary
directory, JupyterLab on 127.0.0.1 with a random port and token, chromium at 1366 px). The
sensitivity pick must show the busy state (class, disabled button, progress bar with its label
whole) and end with a short summary; bits slider moves made with the keyboard must change the
EER and the histogram; mixed precision must apply; after saving and reloading the tab on the
running kernel, the histogram's title, levels and bars and the DET's quantized line must still
be the current ones. At 1366 and 1920 px nothing of the workbench may overflow its output area
or the window, and no label may be cut; screenshots go to ``tests/artifacts/workbench_<width>.png``.
The seconds from each slider key press, and from the mixed-precision click, to the last figure
drawn are written to ``tests/artifacts/browser_timings.json`` and printed: measured here, not
asserted (``benchmarks/bench_widgets.py --browser`` is where they are benchmarked). Every wait is
bounded; JupyterLab is always stopped.

Needs ``/usr/bin/chromium`` (``scripts/install_browser.sh``) and the ``playwright`` package (its
bundled driver only; no browser is downloaded). Outside CI the test skips when either is missing.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from svlab.workbench.browser import (
    CHROMIUM,
    NOTEBOOK_RUN_S,
    SERVER_START_S,
    UPDATE_S,
    lab_server,
    open_chromium,
    run_notebook,
    time_mixed_precision,
    time_slider_moves,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "07_workbench.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
IN_CI = os.environ.get("CI", "").lower() == "true"
MOVES = ["Home", *["ArrowRight"] * 6]  # fp32 -> 1 bit (the largest change), then 2 ... 7 bits


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
    with lab_server(NOTEBOOK, tmp_path_factory.mktemp("lab")) as served:
        yield served


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


LABELS_CUT = """(selector) => Array.from(document.querySelectorAll(selector))
    .filter(l => l.scrollWidth > l.clientWidth + 1).map(l => l.textContent)"""


@pytest.mark.slow
def test_workbench_runs_and_reacts_in_chromium(playwright_api, lab, tmp_path):
    url, token, log = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open_chromium(playwright_api, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            _exercise(page, url, token)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            print(f"JupyterLab log:\n{log.read_text()[-3000:]}")
            print("browser console:\n" + "\n".join(console[-40:]))
            raise


def _exercise(page, url: str, token: str) -> None:
    run_notebook(page, url, token, NOTEBOOK.name)
    _check_width(page, 1366)

    # a long action: busy class, disabled buttons, progress bar with its label whole, a summary
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
    assert page.evaluate(LABELS_CUT, ".svlab-progress .widget-label") == []
    page.wait_for_function(
        "() => /updated in \\d+\\.\\d\\d s/.test("
        "document.querySelector('.svlab-status').textContent)",
        timeout=NOTEBOOK_RUN_S * 1000)
    assert page.locator(".svlab-busy").count() == 0 and not pick.is_disabled()
    summary = page.locator(".svlab-message").first.inner_text()
    assert 0 < len(summary) < 300 and "together" in summary, summary

    # slider moves with the keyboard, timed from the key press to the last figure drawn
    eer_before = page.locator(".svlab-eer").first.inner_text()
    histogram_before = page.evaluate(HISTOGRAM)
    assert histogram_before is not None, "the histogram did not render"
    first_move = time_slider_moves(page, MOVES[:1])
    moved = page.evaluate(HISTOGRAM)
    assert "1 bit" in moved["title"] and moved["levels"] == 2, moved
    assert moved["title"] != histogram_before["title"]
    assert moved["count"] == _layer_numel(moved["title"])
    assert page.locator(".svlab-eer").first.inner_text() != eer_before
    moves = first_move + time_slider_moves(page, MOVES[1:])
    assert "7 bit" in page.evaluate(HISTOGRAM)["title"]

    mixed = time_mixed_precision(page)
    assert "mixed precision" in page.locator(".svlab-message").first.inner_text()
    timings = {"slider_move_s": moves, "median_slider_move_s": statistics.median(moves),
               "mixed_precision_s": mixed, "load_average_1min": os.getloadavg()[0]}
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings, indent=1))
    print(f"in the browser: slider move median {timings['median_slider_move_s']:.2f} s "
          f"(max {max(moves):.2f}), mixed precision {mixed:.2f} s, "
          f"load {timings['load_average_1min']:.1f}")

    # the same kernel, the tab reloaded: the figures show the state they had
    moved, eer_after = page.evaluate(HISTOGRAM), page.locator(".svlab-eer").first.inner_text()
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

    _check_width(page, 1920)
