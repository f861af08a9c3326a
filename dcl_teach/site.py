"""The course as a website, readable before it is run, and offline.

``python -m dcl_teach.course site`` writes ``build/site/``: a Sphinx site (myst-nb, with
``nb_execution_mode = "off"``, so every notebook shows its committed outputs and nothing is
executed) made of

* the landing page: the README's introduction and course map, each notebook linked;
* one page per notebook of ``notebooks/``, in course order, badges included;
* the seminar guide (``docs/teaching.md``), the references (``docs/references.md``) and the
  benchmark tables (the README's benchmark section and ``docs/benchmarks/*.json``);
* an API reference of ``dcl_teach`` from its docstrings (autodoc + napoleon);
* the reveal.js deck of every notebook, under ``slides/``.

Nothing is loaded from a CDN: MathJax 3 (from the ``sphinx-mathjax-offline`` wheel) and
reveal.js (from the ``sphinx-revealjs`` wheel) are copied into the build, and the Colab and
Binder badge images are local SVGs. The pages are staged in ``build/site-src/`` (generated,
never edited) from the configuration in ``docs/site/``.
"""

from __future__ import annotations

import html.parser
import importlib.util
import json
import pkgutil
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dcl_teach.colab import BINDER_BADGE_SVG, COLAB_BADGE_SVG

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
CONF_DIR = Path("docs") / "site"
"""Sphinx configuration and static files, relative to the repository root."""
BADGES = {
    COLAB_BADGE_SVG: "_static/badges/colab.svg",
    BINDER_BADGE_SVG: "_static/badges/binder.svg",
}
"""Remote badge image -> the local copy shown in its place (a page must load offline)."""
# What MathJax's tex-chtml component loads at run time: TeX extensions on demand (autoload),
# the CHTML fonts, and the menu/accessibility parts the context menu asks for. The speech-rule
# maps (sre/, 4 MB) are only loaded by the explorer, which is off.
MATHJAX_PARTS = ("tex-chtml.js", "input/tex/extensions", "output/chtml/fonts/woff-v2", "ui", "a11y")
# The decks use reveal.js's "white" theme: its fonts ship with it (the default theme of nbconvert,
# "simple", loads its fonts from Google).
REVEAL_THEME = "white"
REVEAL_PARTS = (
    "dist/reveal.js",
    "dist/reveal.css",
    "dist/reset.css",
    f"dist/theme/{REVEAL_THEME}.css",
    "dist/theme/fonts/source-sans-pro",
    "plugin/notes",
)


class SiteError(RuntimeError):
    """The site cannot be built (a missing tool, or Sphinx reported an error)."""


# --------------------------------------------------------------------------- vendored assets


def _package_dir(module: str, sub: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SiteError(f"{pip_name} is not installed: pip install -e '.[site]'")
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    if not path.is_dir():
        raise SiteError(f"{pip_name} installed without {sub}/ (looked in {path})")
    return path


def mathjax_dir() -> Path:
    """MathJax 3 as vendored by the ``sphinx-mathjax-offline`` wheel (its import name has dashes)."""
    return _package_dir("sphinx-mathjax-offline", "static/mathjax", "sphinx-mathjax-offline")


def reveal_dir() -> Path:
    """reveal.js as vendored by the ``sphinx-revealjs`` wheel."""
    return _package_dir("sphinx_revealjs", "_static/revealjs", "sphinx-revealjs")


def _copy_parts(src: Path, dest: Path, parts: tuple[str, ...]) -> Path:
    shutil.rmtree(dest, ignore_errors=True)  # nothing stale from an earlier build stays
    for part in parts:
        source, target = src / part, dest / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(
                source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.map")
            )
        else:
            shutil.copy2(source, target)
    return dest


def copy_mathjax(dest: Path) -> Path:
    """Copy what MathJax's ``tex-chtml.js`` needs offline into ``dest``; return ``dest``."""
    return _copy_parts(mathjax_dir(), Path(dest), MATHJAX_PARTS)


def copy_reveal(dest: Path) -> Path:
    """Copy reveal.js (script, styles, themes, notes plugin) into ``dest``; return ``dest``."""
    return _copy_parts(reveal_dir(), Path(dest), REVEAL_PARTS)


# --------------------------------------------------------------------------- the pages


def lessons(root: Path) -> list[Path]:
    """The course's notebooks in course order (their ``NN_`` prefix)."""
    return sorted((Path(root) / "notebooks").glob(NOTEBOOK_GLOB))


def readme_section(text: str, heading: str) -> str:
    """The body of the README's ``## heading`` section, up to the next ``##`` heading.

    Raises:
        SiteError: the README has no such section.

    Example:
        >>> readme_section("# T\\n## A\\none\\n## B\\ntwo\\n", "A")
        'one'
    """
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise SiteError(f"the README has no '## {heading}' section")
    return match[1].strip()


def _link_lessons(table: str, names: list[str]) -> str:
    """Turn each `` `NN_name` `` in the course map into a link to its page."""
    for name in names:
        table = table.replace(f"| `{name}` |", f"| [{name}]({name}.ipynb) |")
    return table


def index_page(readme: str, names: list[str]) -> str:
    """The landing page: the README's title, badges, introduction and course map."""
    title, _, rest = readme.partition("\n")
    intro = rest.split("\n## ", 1)[0].strip()
    course_map = _link_lessons(readme_section(readme, "The course and the package"), names)
    decks = "\n".join(f'<li><a href="slides/{name}.slides.html">{name}</a></li>' for name in names)
    toc = "\n".join(names)
    return f"""{title}

{intro}

## The course and the package

{course_map}

## Slides

One reveal.js deck per notebook (the student edition; arrow keys move, `S` opens the
speaker view). Like this site, the decks work without a network.

<ul class="slide-decks">
{decks}
</ul>

```{{toctree}}
:caption: Lessons
:hidden:

{toc}
```

```{{toctree}}
:caption: Teaching and reference
:hidden:

teaching
benchmarks
references
api
```
"""


def _number(value, fmt: str) -> str:
    """``value`` formatted, or "-" where the benchmark recorded none."""
    return "-" if value is None else format(value, fmt)


def _benchmark_table(report: dict) -> str:
    machine = report.get("machine", {})
    head = (
        f"**{report.get('loss', '?')}**, forward + backward, D = {report.get('D', '?')}, "
        f"{report.get('dtype', '?')}, tau = {report.get('tau', '?')}, median of "
        f"{report.get('repeats', '?')} ({machine.get('cpu', '?')}, "
        f"{machine.get('torch_threads', '?')} threads, torch {machine.get('torch', '?')})"
    )
    rows = [
        "| N | variant | ms | x matmul floor | naive / this | peak extra MiB |",
        "|---" * 6 + "|",
    ]
    for r in report.get("results", []):
        if r.get("failed"):
            rows.append(f"| {r.get('N')} | {r.get('variant')} | failed | | | |")
            continue
        seconds = r.get("seconds")
        rows.append(
            f"| {r.get('N')} | {r.get('variant')} "
            f"| {_number(None if seconds is None else 1e3 * seconds, '.1f')} "
            f"| {_number(r.get('vs_floor'), '.2f')} | {_number(r.get('naive_vs_this'), '.2f')} "
            f"| {_number(r.get('peak_extra_MiB'), '.1f')} |"
        )
    return head + "\n\n" + "\n".join(rows)


def benchmarks_page(readme: str, bench_dir: Path) -> str:
    """The README's benchmark section, then one table per recorded loss benchmark."""
    parts = ["# Benchmarks", readme_section(readme, "Benchmarks"), "## Recorded loss benchmarks"]
    for path in sorted(Path(bench_dir).glob("loss-*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        parts.append(f"From `docs/benchmarks/{path.name}`:\n\n" + _benchmark_table(report))
    return "\n\n".join(parts) + "\n"


def api_page() -> str:
    """One ``automodule`` per module of ``dcl_teach``, in alphabetical order."""
    import dcl_teach

    names = sorted(
        m.name for m in pkgutil.iter_modules(dcl_teach.__path__) if not m.name.startswith("_")
    )
    blocks = [
        f"## `dcl_teach.{name}`\n\n```{{eval-rst}}\n.. automodule:: dcl_teach.{name}\n"
        "   :members:\n   :show-inheritance:\n```"
        for name in names
    ]
    return (
        "# API reference\n\nGenerated from the docstrings of `dcl_teach`.\n\n"
        + "\n\n".join(blocks)
        + "\n"
    )


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    "[Interactive sliders: they need a running kernel.\n"
    " Open this notebook in Colab or Binder (the badges at the top) to move them.]"
)


def lesson_notebook(path: Path) -> str:
    """The notebook as its page shows it: committed outputs, a note in place of each widget,
    and a link to the lesson's slides beside its Colab and Binder badges.

    A widget's saved output is only its text form (``interactive(children=(FloatLogSlider(...``),
    which tells a reader nothing on a static page; every other output is kept as committed.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "colab-badge" in cell.get("metadata", {}).get("tags", []):
            cell.source = cell.source.rstrip() + (
                f'\n<a class="slides-link" href="slides/{Path(path).stem}.slides.html">'
                "Slides of this lesson</a>"
            )
        for output in cell.get("outputs", []):
            if WIDGET_MIME in output.get("data", {}):
                output["data"] = {"text/plain": WIDGET_NOTE}
    return nbformat.writes(nb)


def stage(root: Path, src: Path) -> list[str]:
    """Write the Sphinx source tree of the site into ``src``; return the lesson names.

    Pages (notebooks included) are rewritten only when their text changes, so Sphinx's
    incremental build redoes only what changed.
    """
    root, src = Path(root), Path(src)
    notebooks = lessons(root)
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {root / 'notebooks'}")
    names = [p.stem for p in notebooks]
    src.mkdir(parents=True, exist_ok=True)
    # Pages of notebooks that were removed or renamed must not linger.
    for old in src.glob(NOTEBOOK_GLOB):
        if old.stem not in names:
            old.unlink()
    shutil.copytree(root / CONF_DIR, src, dirs_exist_ok=True)
    copy_mathjax(src / "_static" / "mathjax")
    for path in notebooks:
        text = lesson_notebook(path)
        target = src / path.name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    readme = (root / "README.md").read_text(encoding="utf-8")
    pages = {
        "index.md": index_page(readme, names),
        "teaching.md": (root / "docs" / "teaching.md").read_text(encoding="utf-8"),
        "references.md": (root / "docs" / "references.md").read_text(encoding="utf-8"),
        "benchmarks.md": benchmarks_page(readme, root / "docs" / "benchmarks"),
        "api.md": api_page(),
    }
    for name, text in pages.items():
        target = src / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    return names


def localise_badges(site: Path) -> int:
    """Point every badge image of the built pages at its local copy; return how many."""
    count = 0
    for page in Path(site).glob("*.html"):
        text = original = page.read_text(encoding="utf-8")
        for remote, local in BADGES.items():
            count += text.count(f'src="{remote}"')
            text = text.replace(f'src="{remote}"', f'src="{local}"')
        if text != original:
            page.write_text(text, encoding="utf-8")
    return count


def build_site(
    root: Path = Path("."), out: Path = Path("build/site"), *, quiet: bool = True
) -> dict[str, object]:
    """Build the whole site into ``out``; return ``{"seconds": ..., "lessons": [...]}``.

    Raises:
        SiteError: a tool is missing or Sphinx reported an error (its log is in the message).
        FileNotFoundError: ``root`` has no notebooks.
    """
    try:
        from sphinx.application import Sphinx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SiteError("Sphinx is not installed: pip install -e '.[site]'") from err
    from dcl_teach import course

    start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    cache = out.parent / (out.name + "-src")
    src, doctrees = cache / "pages", cache / "doctrees"
    names = stage(root, src)
    log = cache / "sphinx.log"
    cache.mkdir(parents=True, exist_ok=True)
    # myst-nb writes the images of executed notebooks into a fixed folder beside ``out``; with
    # execution off it holds nothing the site needs. Removed afterwards unless it was there.
    scratch = out.parent / "jupyter_execute"
    scratch_was_there = scratch.exists()
    with open(log, "w", encoding="utf-8") as stream:
        app = Sphinx(
            str(src),
            str(src),
            str(out),
            str(doctrees),
            "html",
            status=stream if quiet else None,
            warning=stream,
            freshenv=False,
        )
        app.build()
    if not scratch_was_there:
        shutil.rmtree(scratch, ignore_errors=True)
    if app.statuscode:
        raise SiteError(f"Sphinx failed (status {app.statuscode}); log: {log}")
    localise_badges(out)
    course.write_decks(lessons(root), out / "slides")
    return {"seconds": time.perf_counter() - start, "lessons": names, "log": log}


# --------------------------------------------------------------------------- link check


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "a" and key == "src"):
                self.links.append(attrs[key])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def _cached(parsed: dict[Path, _Links], path: Path) -> _Links:
    if path not in parsed:
        parsed[path] = _parse(path)
    return parsed[path]


def broken_links(site: Path) -> list[str]:
    """Every internal link of the built pages that points at no file or at no anchor.

    External links (with a scheme, or ``//host``) are not followed. A link ``page.html#x`` must
    find the file and an element with ``id`` or ``name`` ``x`` in it.
    """
    site = Path(site).resolve()
    parsed: dict[Path, _Links] = {}
    problems = []
    pages = [p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts]
    for page in sorted(pages):
        links = _cached(parsed, page)
        for link in links.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)}: {link}"
            if site not in target.parents and target != site:
                problems.append(f"{where} (outside the site)")
            elif not target.exists():
                problems.append(f"{where} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = _cached(parsed, target).ids
                # As a browser does: the fragment as written, else percent-decoded.
                if parts.fragment not in ids and unquote(parts.fragment) not in ids:
                    problems.append(f"{where} (no anchor #{parts.fragment})")
    return problems


def site_size(site: Path) -> int:
    """Bytes of every file under ``site``."""
    return sum(p.stat().st_size for p in Path(site).rglob("*") if p.is_file())
