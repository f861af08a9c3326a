"""The course website: every lesson, its outputs, badges, equations and links, offline.

The site is built once for this module (``dcl_teach.site.build_site``, as
``python -m dcl_teach.course site`` does) into a temporary folder. The static checks read the
built HTML; the browser test serves it from 127.0.0.1 to Debian's Chromium with every other
address blocked, as in a seminar room without a network, and saves screenshots of a lesson
page and a slide to ``artifacts/site/`` (git-ignored).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS

from dcl_teach import colab, course, site

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the browser test skips, saying so
    sync_playwright = None

pytest.importorskip("sphinx", reason="the site needs the [site] extra: pip install -e '.[site]'")
pytest.importorskip("myst_nb", reason="the site needs the [site] extra: pip install -e '.[site]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = site.lessons(ROOT)
NAMES = [p.stem for p in NOTEBOOKS]
ARTIFACTS = ROOT / "artifacts" / "site"
PAGES = [*NAMES, "index", "teaching", "benchmarks", "references", "api"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # builds the site, drives Chromium


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    report = site.build_site(ROOT, out)
    assert report["lessons"] == NAMES
    return out


class _Tags(html.parser.HTMLParser):
    """Every start tag of a page, as ``(tag, attrs)``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(page: Path) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.tags


CSS_URL = re.compile(r"""(?:url\(|@import)\s*['"]?((?:https?:)?//[^'")\s;]+)""")


def _inline_styles(page: Path) -> str:
    return "".join(re.findall(r"<style[^>]*>(.*?)</style>", page.read_text(encoding="utf-8"), re.S))


def _external(url: str | None) -> bool:
    return (
        bool(url)
        and (bool(urlsplit(url).scheme) or url.startswith("//"))
        and not url.startswith("data:")
    )


# --------------------------------------------------------------------------- the pages


def test_every_notebook_is_a_lesson_page_in_course_order(built):
    assert NAMES, "no notebooks found"
    missing = [name for name in NAMES if not (built / f"{name}.html").exists()]
    assert not missing, f"notebooks missing from the site: {missing}"
    nav, in_toc = [], False
    for tag, a in tags(built / "index.html"):  # the sidebar's first-level entries, in order
        if tag == "li":
            in_toc = "toctree-l1" in (a.get("class") or "")
        elif tag == "a" and in_toc:
            nav.append(a.get("href", "").removesuffix(".html"))
            in_toc = False
    lessons_in_nav = [h for h in dict.fromkeys(nav) if re.fullmatch(r"\d\d_\w+", h)]
    assert lessons_in_nav == NAMES, "the table of contents must list every notebook, in order"


def test_lesson_pages_show_the_committed_outputs(built):
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        pngs = sum(
            "image/png" in o.get("data", {})
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.outputs
        )
        imgs = [a for t, a in tags(built / f"{path.stem}.html") if t == "img"]
        figures = [a for a in imgs if a.get("src", "").startswith("_images/")]
        assert len(figures) == pngs, f"{path.stem}: {len(figures)} figures, notebook has {pngs}"
        for a in figures:
            assert (built / a["src"]).stat().st_size > 0


def test_widgets_are_replaced_by_a_note_saying_where_they_run(built):
    with_widgets = [
        path.stem
        for path in NOTEBOOKS
        if any(
            site.WIDGET_MIME in o.get("data", {})
            for c in nbformat.read(path, as_version=4).cells
            for o in c.get("outputs", [])
        )
    ]
    assert with_widgets, "expected the slider notebooks to have saved widget outputs"
    for name in with_widgets:
        text = (built / f"{name}.html").read_text(encoding="utf-8")
        assert "interactive(children=(" not in text, name
        assert "Open this notebook in Colab or Binder" in text, name
        assert "Interactive sliders" in text, name


def test_lesson_pages_carry_their_colab_and_binder_badges(built):
    for name in NAMES:
        page = tags(built / f"{name}.html")
        hrefs = {a.get("href") for t, a in page if t == "a"}
        assert colab.colab_url(f"notebooks/{name}.ipynb") in hrefs, name
        assert colab.binder_url(f"notebooks/{name}.ipynb") in hrefs, name
        assert f"slides/{name}.slides.html" in hrefs, f"{name}: no link to its slides"
        srcs = {a.get("src") for t, a in page if t == "img"}
        assert set(site.BADGES.values()) <= srcs, f"{name}: badge images not local: {srcs}"


def test_numbered_equations_reach_the_pages(built):
    for path in NOTEBOOKS:
        text = (built / f"{path.stem}.html").read_text(encoding="utf-8")
        for tag in course.equation_tags(nbformat.read(path, as_version=4)):
            assert f"\\tag{{{tag}}}" in text, f"equation ({tag}) missing from {path.stem}.html"


def test_landing_page_has_the_course_map_with_links(built):
    text = (built / "index.html").read_text(encoding="utf-8")
    assert "The course and the package" in text
    for name in NAMES:
        assert f'href="{name}.html"' in text
        assert f'href="slides/{name}.slides.html"' in text


def test_api_reference_is_generated_from_the_docstrings(built):
    text = (built / "api.html").read_text(encoding="utf-8")
    for anchor in ("dcl_teach.losses.dcl", "dcl_teach.grads.coupling", "module-dcl_teach.masks"):
        assert f'id="{anchor}"' in text, anchor
    assert "Taught in notebook" in text
    assert re.search(r"Eq\. \(\d\.\d\) of the course", text)
    # napoleon turned the Google sections into field lists
    assert "Parameters" in text and "Raises" in text


def test_teaching_references_and_benchmarks_are_pages(built):
    assert "A 90-minute seminar" in (built / "teaching.html").read_text(encoding="utf-8")
    refs = (built / "references.html").read_text(encoding="utf-8")
    assert "arxiv.org/abs/2110.06848" in refs and "arxiv.org/abs/2002.05709" in refs
    bench = (built / "benchmarks.html").read_text(encoding="utf-8")
    assert "matmul floor" in bench and "loss-dcl.json" in bench


def test_every_internal_link_resolves(built):
    assert site.broken_links(built) == []


def test_no_page_or_deck_loads_anything_from_the_network(built):
    loads = []
    for page in sorted(built.rglob("*.html")):
        if "_static" in page.relative_to(built).parts:
            continue
        for tag, a in tags(page):
            url = a.get("src") if tag in ("script", "img", "iframe") else None
            if tag == "link" and "stylesheet" in (a.get("rel") or ""):
                url = a.get("href")
            if _external(url):
                loads.append(f"{page.relative_to(built)}: <{tag}> {url}")
        for url in CSS_URL.findall(_inline_styles(page)):
            loads.append(f"{page.relative_to(built)}: <style> {url}")
    for sheet in sorted(built.rglob("*.css")):
        for url in CSS_URL.findall(sheet.read_text(encoding="utf-8", errors="replace")):
            loads.append(f"{sheet.relative_to(built)}: {url}")
    assert loads == []


def test_decks_sit_next_to_their_reveal_and_mathjax(built):
    for name in NAMES:
        deck = built / "slides" / f"{name}.slides.html"
        srcs = [a["src"] for t, a in tags(deck) if t == "script" and a.get("src")]
        assert "reveal.js/dist/reveal.js" in srcs and "mathjax/tex-chtml.js" in srcs, srcs
        for src in srcs:
            assert (deck.parent / src).is_file(), src


# --------------------------------------------------------------------------- the checker can fail


def test_link_checker_reports_a_missing_page_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.html").write_text(
        '<a href="b.html#here">ok</a><a href="c.html">gone</a><a href="b.html#nowhere">x</a>'
        '<img src="_images/none.png"><a href="https://example.org/">external</a>'
    )
    (tmp_path / "b.html").write_text('<h1 id="here">b</h1>')
    assert site.broken_links(tmp_path) == [
        "a.html: c.html (no such file)",
        "a.html: b.html#nowhere (no anchor #nowhere)",
        "a.html: _images/none.png (no such file)",
    ]


def test_a_missing_notebook_page_is_caught(built, tmp_path):
    # The first check above, on a copy of the site that lost a lesson page.
    import shutil

    copy = tmp_path / "site"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("_static", "slides", "_images"))
    (copy / f"{NAMES[-1]}.html").unlink()
    assert any(NAMES[-1] in p for p in site.broken_links(copy))


def test_benchmark_page_shows_unrecorded_numbers_as_a_dash(tmp_path):
    report = {
        "loss": "dcl",
        "D": 128,
        "dtype": "float32",
        "tau": 0.1,
        "repeats": 1,
        "machine": {"cpu": "test", "torch_threads": 1, "torch": "x"},
        "results": [
            {
                "N": 8,
                "variant": "fused",
                "seconds": 0.002,
                "vs_floor": None,
                "naive_vs_this": None,
                "peak_extra_MiB": None,
            },
            {"N": 8, "variant": "naive", "failed": True},
        ],
    }
    (tmp_path / "loss-dcl.json").write_text(json.dumps(report))
    page = site.benchmarks_page("# T\n## Benchmarks\nprose\n", tmp_path)
    assert "| 8 | fused | 2.0 | - | - | - |" in page
    assert "| 8 | naive | failed |" in page


def test_readme_section_is_a_clear_error_when_missing():
    with pytest.raises(site.SiteError, match="no '## Nope' section"):
        site.readme_section("# T\n## A\nx\n", "Nope")


# --------------------------------------------------------------------------- in a real browser, offline


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(built):
    handler = functools.partial(_Quiet, directory=str(built))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


MATHJAX_DONE = """async () => {
    // A page without maths does not load MathJax (Sphinx adds it only where there are equations).
    if (!document.querySelector('script[src*="tex-chtml"]')) return 0;
    for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
        await new Promise(r => setTimeout(r, 50));
    await MathJax.startup.promise;
    return document.querySelectorAll('mjx-container').length;
}"""

IMAGES = """async () => {
    const imgs = [...document.querySelectorAll('img')];
    for (const img of imgs) { img.loading = 'eager'; try { await img.decode(); } catch (e) {} }
    return imgs.map(i => ({src: i.getAttribute('src'), w: i.naturalWidth}));
}"""

# Visible text only: MathJax keeps no TeX in view once it has typeset a page.
VISIBLE_TEXT = "() => document.body.innerText"


@pytest.mark.browser
def test_site_and_a_deck_work_offline_in_chromium(built, served):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    blocked: list[str] = []
    problems: list[str] = []

    def only_localhost(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", only_localhost)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            for name in PAGES:
                errors.clear()
                page.goto(f"{served}/{name}.html", wait_until="load")
                typeset = page.evaluate(MATHJAX_DONE)
                text = page.evaluate(VISIBLE_TEXT)
                images = page.evaluate(IMAGES)
                if errors:
                    problems.append(f"{name}: console errors {errors}")
                if name in NAMES and typeset == 0:
                    problems.append(f"{name}: no typeset equation (mjx-container)")
                if page.locator("mjx-merror").count():
                    problems.append(
                        f"{name}: MathJax errors {page.locator('mjx-merror').all_inner_texts()}"
                    )
                for raw in ("$$", "\\tag", "\\frac", "\\(q_B"):
                    # (the API reference quotes ``\tag{...}`` as code, on purpose)
                    if raw in text and name != "api":
                        problems.append(f"{name}: raw TeX {raw!r} in the visible text")
                broken = [i["src"] for i in images if i["w"] == 0]
                if broken:
                    problems.append(f"{name}: images not loaded {broken}")
                badges = {i["src"] for i in images} & set(site.BADGES.values())
                if name in NAMES and len(badges) != 2:
                    problems.append(f"{name}: Colab/Binder badge images missing: {images}")
            page.goto(f"{served}/04_dcl.html", wait_until="load")
            page.evaluate(MATHJAX_DONE)
            page.locator("mjx-container[display='true']").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "lesson-04_dcl.png"))

            errors.clear()
            page.goto(f"{served}/slides/02_infonce_gradient.slides.html", wait_until="load")
            typeset = page.evaluate(MATHJAX_DONE)
            assert typeset > 0, "the deck typeset no equation"
            page.wait_for_function("() => window.Reveal && Reveal.isReady()")
            index = page.evaluate(
                """() => {
                const slides = Reveal.getSlides();
                const i = slides.findIndex(s => s.querySelector('mjx-container[display="true"]'));
                Reveal.slide(...Object.values(Reveal.getIndices(slides[i])));
                return i;
            }"""
            )
            assert index >= 0, "no slide with a display equation"
            page.wait_for_timeout(800)  # the slide transition
            slide_text = page.evaluate("() => Reveal.getCurrentSlide().innerText")
            assert page.locator("section.present mjx-container").count() > 0
            assert "$$" not in slide_text and "\\tag" not in slide_text, slide_text
            page.screenshot(path=str(ARTIFACTS / "slide-02_infonce_gradient.png"))
            if errors:
                problems.append(f"deck: console errors {errors}")
        finally:
            browser.close()
    assert blocked == [], f"requests to the network: {blocked}"
    assert problems == [], "\n".join(problems)
