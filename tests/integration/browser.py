"""A headless browser for tests that look at the MLflow UI as a reviewer would.

The browser is Debian's ``chromium`` package (``apt-get install -y chromium``), driven by Playwright for
Python. Playwright's own browser download (``playwright install``) is never used: the launch points at
the system binary. The page may reach the MLflow server under test and nothing else.

What the MLflow 3.17 UI does that the helpers here deal with (read from its bundle,
``mlflow/server/js/build/static/js/main.*.js``):
- it opens in a "GenAI" view, where audit runs are called evaluations and the sidebar has no model
  registry; ``?workflowType=machine_learning`` on a hash route switches to the "Model training" view
  (the same as the toggle at the top left, which it remembers in localStorage);
- an "MLflow Assistant" side panel opens by itself on the first visit and takes a quarter of the
  width; a reviewer closes it once and the UI remembers that (localStorage ``mlflow.assistant.*``);
- the compare-runs page shows metrics in a virtualised grid 300 px high: only the rows in view exist
  in the DOM, so reading every metric means scrolling the grid;
- a metric value there is shown by ``Utils.formatMetric`` (see ``format_metric``);
- an HTML artifact is shown in a sandboxed iframe loaded from a ``blob:`` URL.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Frame, Page

CHROMIUM = Path(os.environ.get("AUDITLENS_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 30_000  # any single wait for the UI; a cold start renders in about 2 s here
ML_VIEW = "workflowType=machine_learning"
# The onboarding side panel, closed as a reviewer would after the first visit (keys: MLflow's useLocalStorage, "<key>_v<version>").
ASSISTANT_CLOSED = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")  # fmt: skip


def require_chromium() -> Path:
    """The system Chromium, or a failed test that says how to install it (never a skip)."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no Chromium at {CHROMIUM}: this test opens the MLflow UI in a real headless browser. "
                    "Install Debian's package (`apt-get install -y chromium`; .ci/run does it), or point "
                    "AUDITLENS_CHROMIUM at a Chromium binary. Playwright's own browser download is not used.",
                    pytrace=False)  # fmt: skip
    return CHROMIUM


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless system Chromium under Playwright; closed (with its processes) on exit."""
    binary = require_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed: `.venv/bin/python -m pip install -c requirements.lock "
                    "-e '.[dev]'` (it is a dev dependency)", pytrace=False)  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(binary), args=LAUNCH_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def reviewer_page(browser: Browser, base_url: str, first_visit: bool = False) -> Iterator[Page]:
    """A fresh browser profile on the MLflow UI; only ``base_url`` is reachable.

    ``first_visit``: exactly what a new reviewer sees; otherwise the onboarding panel has been closed.
    """
    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []

    def elsewhere(url: str) -> bool:
        return urlparse(url).scheme in ("http", "https", "ws", "wss") and not url.startswith(base_url)

    def abort(route) -> None:
        blocked.append(route.request.url)
        route.abort()

    context.route(elsewhere, abort)
    if not first_visit:
        context.add_init_script(ASSISTANT_CLOSED)
    try:
        page = context.new_page()
        page.blocked_requests = blocked  # for the test's message, if a page needs something it may not fetch
        yield page
    finally:
        context.close()


def ui_url(base_url: str, route: str, view: str | None = ML_VIEW) -> str:
    """``base_url/#/route``, in the Model training view unless ``view`` is None."""
    url = f"{base_url.rstrip('/')}/#/{route.lstrip('/')}"
    return url if view is None else f"{url}{'&' if '?' in route else '?'}{view}"


def compare_runs_route(run_ids: list[str], experiment_ids: list[str]) -> str:
    dumps = lambda items: json.dumps(items, separators=(",", ":"))  # noqa: E731
    return f"compare-runs?runs={dumps(run_ids)}&experiments={dumps(sorted(set(experiment_ids)))}"


class Screenshots:
    """PNG screenshots in one folder; ``paths`` lists them in the order they were taken."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def take(self, page: Page, name: str) -> Path:
        path = self.folder / f"{len(self.paths) + 1:02d}_{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="hide")
        self.paths.append(path)
        return path


def expect(target):
    """Playwright's ``expect`` (auto-waiting assertions), imported when first used."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


# --- what the pages show --------------------------------------------------------------------------

def format_metric(value: float) -> str:
    """A metric value as MLflow's compare page writes it: ``Utils.formatMetric`` in the UI's bundle.

    ``0 -> "0"``; ``|v| < 0.001`` -> ``v.toExponential(3)``; ``< 10`` -> 3 decimals; ``< 100`` -> 2;
    otherwise 1; trailing zeros dropped as JavaScript's ``Number.toString`` does.
    """
    if value == 0:
        return "0"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    size = abs(value)
    if size < 0.001:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    scale = 1e3 if size < 10 else 1e2 if size < 100 else 1e1
    return _js_number(_js_round(value * scale) / scale)


def _js_round(x: float) -> float:
    """JavaScript's Math.round: to the nearest integer, halves toward +infinity."""
    low = math.floor(x)
    return float(low + 1 if x - low >= 0.5 else low)


def _js_number(x: float) -> str:
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    return repr(x)


_GRID_CELLS = """grid => [...grid.firstElementChild.children].map(c => ({
    top: parseFloat(c.style.top), left: parseFloat(c.style.left),
    height: parseFloat(c.style.height), width: parseFloat(c.style.width), text: c.innerText.trim()}))"""


def _settled(read, interval_s: float = 0.25, timeout_s: float = 10.0) -> None:
    """Wait until two reads ``interval_s`` apart agree: a virtualised grid renders a window's rows over several frames,
    its lower rows last, and later still on a loaded machine."""
    deadline, before = time.monotonic() + timeout_s, read()
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = read()
        if now == before:
            return
        before = now


def compare_page_metrics(page: Page) -> dict[str, list[str]]:
    """Every row of the compare page's Metrics grid: metric name -> the values shown, one per run column.

    The grid is virtualised (only rows in its 300 px window exist in the DOM), so it is scrolled as a
    reviewer would, window by window, waiting each time until the rows of that window are rendered.
    """
    switch = page.get_by_role("switch", name="Metrics - Show diff only")
    section = page.locator("div").filter(has=switch).filter(has=page.get_by_role("grid")).last  # innermost
    grids = section.get_by_role("grid")
    grids.nth(1).wait_for()
    names, values = grids.nth(0).element_handle(), grids.nth(1).element_handle()
    first = names.evaluate(_GRID_CELLS)[0]
    row_height = first["height"]
    total, window = values.evaluate("g => [g.scrollHeight, g.clientHeight]")
    rows: dict[int, str] = {}
    cells: dict[int, dict[int, str]] = {}
    top = 0.0
    while True:
        values.evaluate("(g, top) => { g.scrollTop = top; }", top)
        wanted = int(top // row_height)
        page.wait_for_function(
            """([names, values, top]) => [names, values].every(g =>
                   [...g.firstElementChild.children].some(c => parseFloat(c.style.top) === top))""",
            arg=[names, values, wanted * row_height],
        )
        _settled(lambda: (names.evaluate(_GRID_CELLS), values.evaluate(_GRID_CELLS)))  # the window's lower rows too
        for cell in names.evaluate(_GRID_CELLS):
            rows[round(cell["top"] / row_height)] = cell["text"]
        for cell in values.evaluate(_GRID_CELLS):
            cells.setdefault(round(cell["top"] / row_height), {})[round(cell["left"] / cell["width"])] = cell["text"]
        if top + window >= total:
            break
        top = min(top + window - row_height, total - window)  # one row of overlap
    assert sorted(rows) == list(range(len(rows))), f"rows missed while scrolling the metrics grid: {sorted(rows)}"
    return {name: [cells.get(index, {}).get(col, "") for col in range(max(map(len, cells.values())))]
            for index, name in rows.items()}  # fmt: skip


def compare_page_row(page: Page, header: str) -> list[str]:
    """The cells of one row of the compare page's run tables ("Run ID:", "Run Name:", a param or tag key)."""
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=header, exact=True)).first
    row.wait_for()
    header_and_cells = row.locator(":scope > th, :scope > td").all_inner_texts()  # the Run ID row is all <th>
    return [text.strip() for text in header_and_cells[1:]]


def html_artifact_frame(page: Page) -> Frame:
    """The frame in which the artifact viewer renders an HTML artifact (a sandboxed ``blob:`` iframe)."""
    iframe = page.locator("iframe[src^='blob:']")
    iframe.wait_for()
    frame = iframe.element_handle().content_frame()
    assert frame is not None, "the artifact viewer's iframe has no content frame"
    frame.wait_for_load_state("load")
    return frame


def images_in(frame: Frame) -> list[dict]:
    """Every <img> of the frame once all have loaded: src, alt, natural and displayed size."""
    frame.wait_for_function("() => document.images.length > 0 && [...document.images].every(i => i.complete)")
    return frame.evaluate("""() => [...document.images].map(i => ({
        src: i.currentSrc || i.src, alt: i.alt, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
        shownWidth: i.getBoundingClientRect().width}))""")


# The text a reviewer sees without scrolling: every text node with a part inside the viewport (below ``limit`` px, when
# less of the document shows) and inside every ancestor that clips it (the UI's folded boxes, a closed <details>).
_FIRST_SCREEN = """limit => {
    const height = Math.min(window.innerHeight, limit), width = window.innerWidth;
    const clip = element => {
        let box = {top: 0, bottom: height, left: 0, right: width};
        for (let e = element; e && e !== document.documentElement; e = e.parentElement) {
            const style = getComputedStyle(e);
            if (style.display === 'none' || style.visibility === 'hidden' || style.opacity === '0') return null;
            if (/hidden|auto|scroll|clip/.test(style.overflowX + style.overflowY)) {
                const b = e.getBoundingClientRect();
                box = {top: Math.max(box.top, b.top), bottom: Math.min(box.bottom, b.bottom),
                       left: Math.max(box.left, b.left), right: Math.min(box.right, b.right)};
            }
        }
        return box;
    };
    const shown = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (!node.textContent.trim()) continue;
        const box = clip(node.parentElement);
        if (!box) continue;
        const range = document.createRange();
        range.selectNodeContents(node);
        if ([...range.getClientRects()].some(r => r.width > 0 && r.height > 0 && r.top < box.bottom && r.bottom > box.top
                                              && r.left < box.right && r.right > box.left))
            shown.push(node.textContent.replace(/\\s+/g, ' ').trim());
    }
    return shown.join(' ');
}"""


def visible_height(page: Page, frame: Frame | None = None) -> float:
    """How much of a document shows in the first screen: the page's viewport, or the part of ``frame``'s iframe
    inside it."""
    if frame is None:
        return float(page.viewport_size["height"])
    box = frame.frame_element().bounding_box()
    assert box is not None, "the iframe is not laid out"
    return max(0.0, min(box["height"], page.viewport_size["height"] - box["y"]))


def first_screen(page: Page, frame: Frame | None = None) -> str:
    """The text shown in the first screen, without scrolling: of the page, or of ``frame`` within it (text nodes joined
    by spaces, none before punctuation: '<b>the data</b>: FAIL' reads 'the data: FAIL')."""
    import re

    return re.sub(r" (?=[:;,.)])", "", (frame or page).evaluate(_FIRST_SCREEN, visible_height(page, frame)))


def top_and_bottom(target: Page | Frame, selector: str) -> tuple[float, float] | None:
    """The top and bottom (in its document's viewport) of the first element ``selector`` matches; None when none does."""
    return target.evaluate("""s => { const e = document.querySelector(s);
        if (!e) return null; const b = e.getBoundingClientRect(); return [b.top, b.bottom]; }""", selector)
