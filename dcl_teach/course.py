"""Student and instructor editions and slide decks, generated from the one source: notebooks/.

``python -m dcl_teach.course build`` reads every notebook in ``notebooks/`` and writes

* ``student/``: exercise solutions and instructor notes removed; each exercise keeps its stub
  and its self-check, which reports "not yet implemented" until the learner fills it in;
* ``instructor/``: every exercise stub replaced by its solution, so every self-check passes,
  and the instructor notes kept, marked as such;
* ``slides/``: one reveal.js deck per notebook (``jupyter nbconvert --to slides``), from the
  student edition, with the slide metadata of the source. The decks load reveal.js and MathJax
  from copies next to them (``slides/reveal.js/``, ``slides/mathjax/``), never from a CDN, so
  they work in a seminar room without a network.

``python -m dcl_teach.course site`` builds the course website into ``build/site/`` (see
:mod:`dcl_teach.site`).

An exercise is three cells sharing the metadata ``{"exercise": "k.m"}`` and tagged
``exercise`` (the stub), ``check`` (the self-check) and ``solution`` (hidden answer); see
:mod:`dcl_teach.exercises`. Instructor notes are markdown cells tagged ``instructor``. The
editions are build outputs, never edited by hand.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

try:
    import nbformat
except ImportError as e:  # a plain `pip install dcl-teach` has no notebook tooling
    raise ImportError(
        "dcl_teach.course needs nbformat and nbconvert, which the course extra brings: "
        'pip install "dcl-teach[course]"'
    ) from e

from dcl_teach.atomic import atomic_write
from dcl_teach.site import SiteError

EDITIONS = ("student", "instructor")
TAG_RE = re.compile(r"\\tag\{([^}]*)\}")


class CourseError(ValueError):
    """A source notebook breaks the exercise conventions."""


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def exercises(nb: nbformat.NotebookNode) -> dict[str, dict[str, int]]:
    """Map each exercise number to the index of its ``exercise``, ``check`` and ``solution`` cells.

    Raises:
        CourseError: an exercise lacks one of its three cells, or has two of a kind.

    Example:
        >>> nb = nbformat.v4.new_notebook()
        >>> for tag in ("exercise", "check", "solution"):
        ...     nb.cells.append(nbformat.v4.new_code_cell("pass", metadata={"exercise": "1.1", "tags": [tag]}))
        >>> exercises(nb)
        {'1.1': {'exercise': 0, 'check': 1, 'solution': 2}}

    Taught in notebook 00.
    """
    found: dict[str, dict[str, int]] = {}
    for i, cell in enumerate(nb.cells):
        number = cell.get("metadata", {}).get("exercise")
        if number is None:
            continue
        kinds = [t for t in _tags(cell) if t in ("exercise", "check", "solution")]
        if len(kinds) != 1:
            raise CourseError(
                f"cell {i} of exercise {number} needs exactly one of the tags exercise/check/solution, has {kinds}"
            )
        parts = found.setdefault(str(number), {})
        if kinds[0] in parts:
            raise CourseError(
                f"exercise {number} has two '{kinds[0]}' cells (cells {parts[kinds[0]]} and {i})"
            )
        parts[kinds[0]] = i
    for number, parts in found.items():
        missing = {"exercise", "check", "solution"} - parts.keys()
        if missing:
            raise CourseError(f"exercise {number} lacks its {', '.join(sorted(missing))} cell(s)")
        if not parts["exercise"] < parts["check"]:
            raise CourseError(f"exercise {number}: the check cell must come after the stub")
    return found


def _clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("jupytext", None)  # an edition is not paired with a script
    return nb


def student_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without solutions and instructor notes, outputs cleared."""
    exercises(nb)  # validate
    out = _clean(nb)
    out.cells = [c for c in out.cells if not {"solution", "instructor"} & set(_tags(c))]
    return out


def instructor_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with each exercise stub replaced by its solution, outputs cleared."""
    parts = exercises(nb)
    out = _clean(nb)
    drop = set()
    for idx in parts.values():
        solution = out.cells[idx["solution"]]
        stub = out.cells[idx["exercise"]]
        stub.source = re.sub(r"\s*# noqa: F811", "", solution.source)
        stub.metadata["tags"] = [t for t in _tags(stub) if t != "exercise"] + ["exercise", "solved"]
        drop.add(idx["solution"])
    for cell in out.cells:
        if "instructor" in _tags(cell) and cell.cell_type == "markdown":
            if not cell.source.lstrip().startswith("> **Instructor note"):
                cell.source = "> **Instructor note.**\n>\n" + "\n".join(
                    "> " + line if line else ">" for line in cell.source.splitlines()
                )
    out.cells = [c for i, c in enumerate(out.cells) if i not in drop]
    return out


# nbconvert's reveal template, with every CDN script replaced by a copy next to the deck:
# reveal.js as plain scripts (no require.js, no jQuery), MathJax 3 instead of MathJax 2 from
# cdnjs, no mermaid and no widget manager (a deck has no outputs to render with them).
OFFLINE_DECK_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}
<script src="{{ reveal_url_prefix }}/dist/reveal.js"></script>
<script src="{{ reveal_url_prefix }}/plugin/notes/notes.js"></script>
{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {
    inlineMath: [['$', '$'], ['\\(', '\\)']],
    displayMath: [['$$', '$$'], ['\\[', '\\]']],
    processEscapes: true,
    processEnvironments: true
  },
  options: {ignoreHtmlClass: 'tex2jax_ignore', processHtmlClass: 'tex2jax_process'}
};
</script>
<script src="{{ resources.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}
{% block footer_js %}
<script>
Reveal.initialize({
  controls: true,
  progress: true,
  history: true,
  transition: "{{ reveal_transition }}",
  slideNumber: "{{ reveal_number }}",
  plugins: [RevealNotes],
  width: {{ reveal_width }},
  height: {{ reveal_height }},
});
</script>
{% endblock footer_js %}
"""
REVEAL_DIR, MATHJAX_DIR = "reveal.js", "mathjax"
"""Folders next to the decks that hold their reveal.js and MathJax."""


def slides_html(nb: nbformat.NotebookNode) -> str:
    """A reveal.js deck of ``nb`` (its student edition), as ``jupyter nbconvert --to slides``.

    The deck expects reveal.js and MathJax in ``reveal.js/`` and ``mathjax/`` beside it
    (:func:`write_decks` puts them there).
    """
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    from dcl_teach import site

    deck = student_edition(nb)
    for cell in deck.cells:
        if "colab-install" in _tags(cell) or "colab-badge" in _tags(cell):
            cell.metadata.setdefault("slideshow", {})["slide_type"] = "skip"
    exporter = SlidesExporter(
        extra_loaders=[DictLoader({"dcl_offline_deck.html.j2": OFFLINE_DECK_TEMPLATE})],
        template_file="dcl_offline_deck.html.j2",
        reveal_url_prefix=REVEAL_DIR,
        reveal_theme=site.REVEAL_THEME,
        mathjax_url=f"{MATHJAX_DIR}/tex-chtml.js",
    )
    body, _ = exporter.from_notebook_node(deck)
    return body


def write_decks(notebooks: list[Path], out: Path) -> list[Path]:
    """Write the deck of each notebook into ``out``, with reveal.js and MathJax beside them.

    Raises:
        dcl_teach.site.SiteError: the packages that ship reveal.js and MathJax are missing.
    """
    from dcl_teach import site

    out = Path(out)
    site.copy_reveal(out / REVEAL_DIR)
    site.copy_mathjax(out / MATHJAX_DIR)
    written = []
    for path in notebooks:
        target = out / (Path(path).stem + ".slides.html")
        atomic_write(target, slides_html(nbformat.read(path, as_version=4)))
        written.append(target)
    return written


def equation_tags(nb: nbformat.NotebookNode) -> list[str]:
    r"""Every ``\tag{...}`` in the markdown cells, in order."""
    return [t for c in nb.cells if c.cell_type == "markdown" for t in TAG_RE.findall(c.source)]


def build(source: Path, out: Path, *, slides: bool = True) -> dict[str, list[Path]]:
    """Write the editions (and decks) of every notebook in ``source`` under ``out``.

    Returns:
        ``{"student": [...], "instructor": [...], "slides": [...]}`` paths written.

    Raises:
        FileNotFoundError: ``source`` holds no notebook.
        CourseError: a notebook breaks the exercise conventions (the message names it).
    """
    notebooks = sorted(Path(source).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {source}")
    written: dict[str, list[Path]] = {"student": [], "instructor": [], "slides": []}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        try:
            editions = {"student": student_edition(nb), "instructor": instructor_edition(nb)}
        except CourseError as err:
            raise CourseError(f"{path.name}: {err}") from None
        for name, edition in editions.items():
            target = Path(out) / name / path.name
            atomic_write(target, nbformat.writes(edition))
            written[name].append(target)
    if slides:
        written["slides"] = write_decks(notebooks, Path(out) / "slides")
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m dcl_teach.course build [--source notebooks] [--out build/course]``,
    or ``python -m dcl_teach.course site [--root .] [--out build/site]``."""
    p = argparse.ArgumentParser(
        prog="python -m dcl_teach.course", description=__doc__.split("\n")[0]
    )
    p.add_argument("command", choices=["build", "site"], help="the editions, or the website")
    p.add_argument("--source", default="notebooks", help="folder of the source notebooks")
    p.add_argument("--root", default=".", help="site: the repository checkout to build from")
    p.add_argument(
        "--out", default=None, help="where it goes (default build/course, or build/site)"
    )
    p.add_argument("--no-slides", action="store_true", help="skip the reveal.js decks")
    args = p.parse_args(argv)
    if args.command == "site":
        return _site(Path(args.root), Path(args.out or "build/site"))
    args.out = args.out or "build/course"
    try:
        written = build(Path(args.source), Path(args.out), slides=not args.no_slides)
    except (FileNotFoundError, CourseError, SiteError) as err:  # SiteError: no reveal.js/MathJax
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, paths in written.items():
        if paths:
            print(f"{name:>10}: {len(paths)} file(s) in {paths[0].parent}")
    return 0


def _site(root: Path, out: Path) -> int:
    from dcl_teach import site

    try:
        report = site.build_site(root, out)
    except (FileNotFoundError, site.SiteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"site: {len(report['lessons'])} lessons, slides and API reference in {out} "
        f"({report['seconds']:.0f} s; open {out / 'index.html'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
