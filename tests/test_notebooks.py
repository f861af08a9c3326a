"""Structure of the lessons: the course conventions, checked on the saved notebooks.

nbval runs the notebooks; these tests check what running cannot: the skeleton of each lesson,
the equation numbering, the paper citations, and the three cells of every exercise.
"""

import re
from pathlib import Path

import nbformat
import pytest

from dcl_teach.colab import BADGE_TAG, INSTALL_TAG, install_cell_source

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = (
    "00_start_here",
    "01_infonce_from_scratch",
    "02_infonce_gradient",
    "03_qb_batch_temperature",
    "04_dcl",
    "05_dclw",
    "06_train_it_yourself",
    "07_geometry",
    "08_memory_queues",
    "09_spot_the_bug",
)
EQUATION_TAGS = {
    "00_start_here": [],
    "01_infonce_from_scratch": ["1.1", "1.2", "1.3"],
    "02_infonce_gradient": [f"2.{m}" for m in range(1, 8)],
    "03_qb_batch_temperature": ["3.1"],
    "04_dcl": ["4.1", "4.2", "4.3", "4.4"],
    "05_dclw": ["5.1", "5.2", "5.3", "5.4"],
    "06_train_it_yourself": ["6.1", "6.2"],
    "07_geometry": [f"7.{m}" for m in range(1, 8)],
    "08_memory_queues": ["8.1", "8.2", "8.3", "8.4"],
    "09_spot_the_bug": [f"9.{m}" for m in range(1, 7)],
}
VERIFIED_PAPER_EQUATIONS = {1, 2, 3, 4}  # what docs/references.md lists as checked


def _read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _tags(cell):
    return cell.metadata.get("tags", [])


def _markdown(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _text(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def _summary_index(nb):
    """Index of the "## Summary" cell: the last cell, or the last before an appendix section."""
    starts = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "markdown" and c.source.startswith("## ")
    ]
    summary = [i for i in starts if nb.cells[i].source.startswith("## Summary")]
    assert len(summary) == 1, "one summary per notebook"
    after = [i for i in starts if i > summary[0]]
    for i in after:  # only appendices may follow the summary, and they hold no exercise
        assert nb.cells[i].source.startswith("## Appendix"), nb.cells[i].source.splitlines()[0]
    assert not any("exercise" in _tags(c) for c in nb.cells[summary[0] :])
    assert after or summary[0] == len(nb.cells) - 1
    if after:
        assert after[0] == summary[0] + 1, "the summary is one cell, the appendix follows it"
    return summary[0]


@pytest.fixture(params=NAMES, scope="module")
def notebook(request):
    return request.param, _read(request.param)


def test_skeleton_badge_title_goals_colab_setup(notebook):
    name, nb = notebook
    badge, title, colab, setup = nb.cells[:4]
    assert badge.cell_type == "markdown" and _tags(badge) == [BADGE_TAG]
    assert title.cell_type == "markdown" and title.source.startswith(f"# {name[:2]} · ")
    assert "Learning goals" in title.source or "In this notebook you will" in title.source
    assert colab.cell_type == "code" and _tags(colab) == [INSTALL_TAG]
    assert colab.source == install_cell_source()
    assert setup.cell_type == "code"
    for line in (
        "%matplotlib inline",
        '%config InlineBackend.figure_formats = ["png"]',
        "torch.manual_seed(0)",
        "device = torch.device(",
    ):
        assert line in setup.source, f"{name}: the setup cell lacks {line!r}"
    assert _summary_index(nb) >= 4  # the last cell, or the last before an appendix


def test_every_section_starts_a_slide(notebook):
    name, nb = notebook
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith(("# ", "## ")):
            slide = cell.metadata.get("slideshow", {}).get("slide_type")
            assert slide == "slide", f"{name}: {cell.source.splitlines()[0]!r} is not a new slide"


def test_equations_are_numbered_in_order_and_once(notebook):
    name, nb = notebook
    tags = re.findall(r"\\tag\{([^}]*)\}", _markdown(nb))
    assert tags == EQUATION_TAGS[name]


def test_references_to_course_equations_exist():
    known = {t for tags in EQUATION_TAGS.values() for t in tags}
    for name in NAMES:
        refs = set(re.findall(r"\((\d\.\d)\)", _markdown(_read(name))))
        assert refs <= known, f"{name} cites equations that do not exist: {sorted(refs - known)}"


def test_only_verified_paper_equations_are_cited(notebook):
    name, nb = notebook
    text = _markdown(nb)
    cited = set()
    for match in re.finditer(
        r"\bEqs?\.\s+(\d+)(?![.\d])((?:\s*(?:,|and|to)\s*\d+(?![.\d]))*)", text
    ):
        cited.add(int(match.group(1)))
        cited.update(int(n) for n in re.findall(r"\d+", match.group(2)))
    assert cited <= VERIFIED_PAPER_EQUATIONS, f"{name} cites paper equations {sorted(cited)}"
    if name != "00_start_here":
        assert cited, f"{name} never cites the paper"


def test_exercises_are_stub_check_solution_in_sequence(notebook):
    name, nb = notebook
    k = int(name[:2])
    numbers = []
    for i, cell in enumerate(nb.cells):
        if "exercise" not in _tags(cell):
            continue
        number = cell.metadata["exercise"]
        numbers.append(number)
        stub, chk, solution = nb.cells[i : i + 3]
        assert [_tags(c) for c in (chk, solution)] == [["check"], ["solution"]], number
        assert chk.metadata["exercise"] == solution.metadata["exercise"] == number
        assert solution.metadata.get("jupyter", {}).get("source_hidden") is True, number
        assert (
            "raise NotImplementedError" in stub.source
            and "NotImplementedError" not in solution.source
        )
        (fn,) = re.findall(r"^def (\w+)\(", stub.source, flags=re.M)
        assert re.search(rf"^def {fn}\(", solution.source, flags=re.M), (
            f"{number}: solution renames {fn}"
        )
        assert re.search(rf'check\(\s*"{re.escape(number)}",\s*{fn},', chk.source), number
        assert re.search(rf"=\s*\(?\s*{fn}\s+if verdict\.ok\s+else", chk.source), number
        heading = nb.cells[i - 1].source
        assert re.match(rf"### Exercise {re.escape(number)}: \S", heading), number
    assert numbers == [f"{k}.{m}" for m in range(1, len(numbers) + 1)] and len(numbers) >= 2


def test_summary_lists_every_exercise_with_its_title(notebook):
    name, nb = notebook
    summary = nb.cells[_summary_index(nb)].source
    headings = re.findall(r"^### Exercise (\d\.\d): (.+)$", _markdown(nb), flags=re.M)
    assert headings
    for number, title in headings:
        line = rf"^\* {re.escape(number)} {re.escape(title)}"
        assert re.search(line, summary, flags=re.M | re.I), (
            f"{name}: {number} {title} not summarised"
        )


def test_saved_outputs_are_complete_and_png_only(notebook):
    name, nb = notebook
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name} is not fully executed"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images and not [o for o in outputs if "image/svg+xml" in o.get("data", {})]
    for cell in code:
        if "nbval-check-output" in _tags(cell):
            assert _text(cell).strip(), f"{name}: a checked cell prints nothing"
        if "check" in _tags(cell):
            assert "not yet implemented" in _text(cell)  # saved as a learner first sees it
        if "widgets." in cell.source and "interact" in cell.source:
            assert "nbval-ignore-output" in _tags(cell), f"{name}: a slider cell is checked"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_nbval_markers_are_tags_not_comments(path):
    """Learners read the code: test plumbing lives in cell tags, never in `# NBVAL_` lines."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        assert "NBVAL_" not in cell.source, f"{path.name}: an NBVAL comment in {cell.source[:60]!r}"
        both = {"nbval-check-output", "nbval-ignore-output"} <= set(_tags(cell))
        assert not both, f"{path.name}: a cell both checked and ignored"


def test_start_here_maps_the_course_and_the_notation():
    text = _markdown(_read("00_start_here"))
    for k, title in enumerate(
        (
            "Start here",
            "InfoNCE from scratch",
            "gradient of InfoNCE",
            "batch size and temperature",
            "(DCL)",
            "(DCLW)",
            "Train it yourself",
            "Geometry",
            "memory queues",
            "Spot the bug",
        )
    ):
        assert re.search(rf"\*\*0{k} [^|]*{re.escape(title)}", text), (
            f"notebook 0{k} not in the table"
        )
    for symbol in ("`z1`", "`z2`", "`z`", "`s`", "`tau`", "`p`", "`q`", "`w`", "`sigma`"):
        assert symbol in text, f"{symbol} missing from the notation table"
    for paper in (r"q_{B,i}^{(k)}", r"U_{i,k}", r"w(z_i^{(1)}, z_i^{(2)})"):
        assert paper in text
    assert r"\mathrm{pos}(a) = (a + N) \bmod 2N" in text, "the positive's index is pos(a)"


@pytest.mark.parametrize("name", NAMES)
def test_the_positive_is_pos_not_p(name):
    """p is kept for softmax weights: the positive's index is pos(a), in prose, code and output."""
    nb = _read(name)
    old = re.compile(r"(?<![A-Za-z])p\((?:a|k|0|p\(a\))\)")
    for cell in nb.cells:
        for text in (cell.source, _text(cell) if cell.cell_type == "code" else ""):
            found = old.findall(text)
            assert not found, f"{name}: p(.) for the positive's index in {cell.source[:60]!r}"
