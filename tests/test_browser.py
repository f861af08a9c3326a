"""A learner's first minutes, in a real browser: JupyterLab, Run All, then move the sliders.

Drives Debian's Chromium (``/usr/bin/chromium``, never a Playwright download) through the
Playwright sync API against a JupyterLab this test starts. On a temporary copy of notebook 03
it runs every cell, waits for the "tau" and "batch size" sliders, moves each with the keyboard
and checks that the figure (a PNG in the widget's output area) is redrawn, and that no cell
shows an error. Screenshots go to ``artifacts/browser/`` (git-ignored).

The same harness first runs on a minimal notebook with the same two sliders, so that a failure
tells a broken harness (JupyterLab, widgets, browser) from a broken notebook 03.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # the test skips, saying so
    PlaywrightTimeout = sync_playwright = None

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_03 = ROOT / "notebooks" / "03_qb_batch_temperature.ipynb"
ARTIFACTS = ROOT / "artifacts" / "browser"
SLIDERS = ("tau", "batch size")
NB = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the notebook in the visible tab
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'  # errors too

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240)]

# A notebook with the contract of notebook 03's interactive cell: sliders "tau" and
# "batch size" redrawing a matplotlib figure shown as a PNG in the widget's output area.
MINIMAL_WIDGET_CELL = """\
import io

import ipywidgets as widgets
import numpy as np
from IPython.display import Image, display
from matplotlib.figure import Figure


def render(tau, batch_size):
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    x = np.linspace(-1, 1, batch_size)
    ax.plot(x, np.exp(x / tau) / np.exp(x / tau).sum(), "o-")
    ax.set_title(f"tau={tau:.3f}, batch size={batch_size}")
    return fig


def redraw(tau, batch_size):
    buf = io.BytesIO()
    render(tau, batch_size).savefig(buf, format="png", dpi=80)
    display(Image(data=buf.getvalue(), format="png"))


explorer = widgets.interactive(
    redraw,
    tau=widgets.FloatLogSlider(value=0.1, base=10, min=-2, max=0, step=0.05,
                               description="tau", continuous_update=False),
    batch_size=widgets.SelectionSlider(options=[8, 16, 32, 64, 128], value=32,
                                       description="batch size", continuous_update=False),
)
display(explorer)
"""


def minimal_notebook(path: Path, *, broken: bool = False) -> None:
    """The two-slider notebook; ``broken`` adds a last cell that raises."""
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Sliders"),
        nbformat.v4.new_code_cell("print('setup ok')"),
        nbformat.v4.new_code_cell(MINIMAL_WIDGET_CELL),
    ]
    if broken:
        nb.cells.append(nbformat.v4.new_code_cell("1 / 0"))
    nbformat.write(nb, path)


@pytest.fixture
def browser():
    """Headless Debian Chromium through Playwright, or a skip saying what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


# --------------------------------------------------------------------------- page helpers

KERNEL_IDLE = """() => {
    const bar = document.querySelector('#jp-main-statusbar');
    return bar !== null && /\\| Idle/.test(bar.innerText) && !/No Kernel/.test(bar.innerText);
}"""

ANY_CELL_STARTED = f"""() => [...document.querySelectorAll('{NB} .jp-CodeCell .jp-InputPrompt')]
    .some(p => /^\\[(\\*|\\d+)\\]:$/.test(p.textContent.trim()))"""

ALL_CELLS_RUN = f"""() => {{
    const prompts = [...document.querySelectorAll('{NB} .jp-CodeCell .jp-InputPrompt')]
        .map(p => p.textContent.trim())
        .filter(t => t !== '');  // the blank prompt of a collapsed input (a hidden solution)
    return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
}}"""

ERRORS = f"""() => [...document.querySelectorAll('{NB} {STDERR}')]
    .map(e => e.textContent)
    .filter(t => /Traceback|Error:/.test(t))"""


def exact(text: str) -> re.Pattern:
    return re.compile(rf"^\s*{re.escape(text)}\s*$")


def explorer(page):
    """The first ``interactive`` box in the visible notebook that holds both sliders."""
    box = page.locator(f"{NB} .widget-interact")
    for description in SLIDERS:
        box = box.filter(
            has=page.locator(".widget-slider .widget-label", has_text=exact(description))
        )
    return box.first


def slider(page, description: str):
    """The explorer's slider whose label reads ``description``."""
    label = page.locator(".widget-label", has_text=exact(description))
    return explorer(page).locator(".widget-slider").filter(has=label).first


def figure_src(page) -> str:
    """``src`` of the figure in the explorer's output area (a ``data:image/png`` URL)."""
    img = explorer(page).locator(".jp-RenderedImage img").last
    img.wait_for(state="visible", timeout=60_000)
    return img.get_attribute("src")


def move_and_wait_for_redraw(page, description: str, before: str, key: str = "ArrowRight") -> str:
    """Focus the slider's handle, press an arrow key once, wait for the new figure."""
    handle = slider(page, description).locator(".noUi-handle")
    readout = slider(page, description).locator(".widget-readout")
    old_value = readout.inner_text()
    handle.focus()
    page.keyboard.press(key)
    page.wait_for_function(
        """([box, old]) => {
            const now = [...box.querySelectorAll('.jp-RenderedImage img')].pop();
            return now !== undefined && now.src !== old;
        }""",
        arg=[explorer(page).element_handle(), before],
        timeout=60_000,
    )
    page.wait_for_function(KERNEL_IDLE, timeout=60_000, polling=250)
    assert readout.inner_text() != old_value, f"the {description!r} slider did not move"
    return figure_src(page)


def run_all_and_move_sliders(page, server, notebook: str, shots: Path) -> dict:
    """Open ``notebook``, Run All, move both sliders; return what was seen."""
    page.goto(server.url(notebook))
    page.locator(f"{NB} .jp-Cell").first.wait_for(timeout=120_000)
    # The toolbar says "idle" before the kernel connects, and a Run All sent then is lost:
    # wait for the status bar's "<kernel> | Idle".
    page.wait_for_function(KERNEL_IDLE, timeout=120_000, polling=250)
    page.screenshot(path=shots / "0_opened.png")

    for attempt in range(2):  # a second Run All only if the first one started nothing
        page.get_by_role("menuitem", name="Run", exact=True).click()  # menu Run > Run All Cells
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(ANY_CELL_STARTED, timeout=30_000, polling=250)
            break
        except PlaywrightTimeout:
            if attempt:
                raise
    page.wait_for_function(
        f"() => ({ALL_CELLS_RUN})() || ({ERRORS})().length > 0", timeout=200_000, polling=500
    )
    errors = page.evaluate(ERRORS)
    if errors:
        page.locator(f"{NB} {STDERR}").first.scroll_into_view_if_needed()
        page.screenshot(path=shots / "1_ran_all.png")
        return {"figures": [], "errors": errors}
    explorer(page).wait_for(state="visible", timeout=60_000)
    first = figure_src(page)
    explorer(page).evaluate("e => e.scrollIntoView({block: 'start'})")  # sliders and figure
    page.screenshot(path=shots / "1_ran_all.png")
    after_tau = move_and_wait_for_redraw(page, "tau", first)
    page.screenshot(path=shots / "2_moved_tau.png")
    after_batch = move_and_wait_for_redraw(page, "batch size", after_tau)
    page.screenshot(path=shots / "3_moved_batch_size.png")
    return {"figures": [first, after_tau, after_batch], "errors": page.evaluate(ERRORS)}


def check_notebook(browser, server, notebook: str, shots: Path) -> None:
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        seen = run_all_and_move_sliders(page, server, notebook, shots)
    except Exception:
        page.screenshot(path=shots / "failure.png", full_page=True)
        raise
    finally:
        page.close()
    assert seen["errors"] == [], (
        f"cells show errors (see {server.log} and {shots}):\n{seen['errors']}"
    )
    first, after_tau, after_batch = seen["figures"]
    assert all(src.startswith("data:image/png;base64,") for src in seen["figures"])
    assert after_tau != first, "moving 'tau' did not change the figure"
    assert after_batch != after_tau, "moving 'batch size' did not change the figure"
    assert seen["errors"] == [], (
        f"cells show errors (see {server.log} and {shots}):\n{seen['errors']}"
    )


# --------------------------------------------------------------------------- tests


def test_sliders_redraw_in_a_minimal_notebook_and_errors_are_caught(browser, jupyter_lab, tmp_path):
    minimal_notebook(tmp_path / "sliders.ipynb")
    minimal_notebook(tmp_path / "broken.ipynb", broken=True)
    server = jupyter_lab(tmp_path)
    check_notebook(browser, server, "sliders.ipynb", ARTIFACTS / "minimal")
    with pytest.raises(AssertionError, match=r"cells show errors(.|\n)*ZeroDivisionError"):
        check_notebook(browser, server, "broken.ipynb", ARTIFACTS / "minimal-broken")


def test_notebook_03_sliders_redraw_the_figure(browser, jupyter_lab, tmp_path):
    if not NOTEBOOK_03.exists():
        pytest.skip("notebook 03 missing")
    shutil.copy(NOTEBOOK_03, tmp_path / NOTEBOOK_03.name)  # the committed notebook stays as it is
    server = jupyter_lab(tmp_path)
    check_notebook(browser, server, NOTEBOOK_03.name, ARTIFACTS / NOTEBOOK_03.stem)
