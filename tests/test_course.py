"""The teaching kit: editions and decks are built from notebooks/ and behave as promised."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from dcl_teach import course
from tests.jupyter_ipc import AsyncIpcKernelManager

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    assert course.main(["build", "--source", str(ROOT / "notebooks"), "--out", str(out)]) == 0
    return out


def _outputs(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def _execute(path: Path):
    # A hung kernel start or a lost reply is an infrastructure failure, not the notebook's:
    # such a run is retried once; a cell that raises fails at once.
    for attempt in (1, 2):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=180,
            startup_timeout=120,
            kernel_name="python3",
            kernel_manager_class=AsyncIpcKernelManager,
            resources={"metadata": {"path": str(ROOT / "notebooks")}},
        )
        try:
            client.execute()
            return nb
        except (CellTimeoutError, DeadKernelError, TimeoutError, RuntimeError):
            if attempt == 2:
                raise


def test_every_source_notebook_has_complete_exercises():
    for path in SOURCES:
        parts = course.exercises(nbformat.read(path, as_version=4))
        assert len(parts) >= 2, (
            f"{path.name} has {len(parts)} exercises, the course promises two or more"
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_student_edition_runs_and_reports_not_yet_implemented(built, path):
    nb = _execute(built / "student" / path.name)
    assert not [c for c in nb.cells if {"solution", "instructor"} & set(course._tags(c))]
    checks = [c for c in nb.cells if "check" in course._tags(c)]
    assert checks
    for cell in checks:
        assert "not yet implemented" in _outputs(cell), (cell.metadata["exercise"], _outputs(cell))
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_instructor_edition_passes_every_self_check(built, path):
    nb = _execute(built / "instructor" / path.name)
    checks = [c for c in nb.cells if "check" in course._tags(c)]
    for cell in checks:
        assert "correct" in _outputs(cell) and "not yet" not in _outputs(cell), (
            cell.metadata["exercise"],
            _outputs(cell),
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_each_deck_builds_with_the_notebooks_numbered_equations(built, path):
    html = (built / "slides" / f"{path.stem}.slides.html").read_text()
    tags = course.equation_tags(nbformat.read(path, as_version=4))
    assert "reveal" in html.lower()
    for tag in tags:
        assert f"\\tag{{{tag}}}" in html, f"equation ({tag}) missing from the deck of {path.name}"


def test_decks_load_reveal_and_mathjax_from_copies_beside_them(built):
    # A seminar room may have no network: no deck may reach for a CDN.
    for path in SOURCES:
        deck = built / "slides" / f"{path.stem}.slides.html"
        html = deck.read_text()
        scripts = re.findall(r'<script[^>]* src="([^"]+)"', html)
        sheets = re.findall(r'<link[^>]* href="([^"]+)"', html)
        assert "reveal.js/dist/reveal.js" in scripts and "mathjax/tex-chtml.js" in scripts
        for url in scripts + sheets:
            assert "://" not in url and not url.startswith("//"), f"{deck.name} loads {url}"
            assert (deck.parent / url).is_file(), f"{deck.name}: {url} is not beside the deck"
        assert "MathJax.Hub" not in html, "the deck configures MathJax 2, but MathJax 3 ships"


def test_broken_exercise_is_reported_with_the_notebook_name(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(
        nbformat.v4.new_code_cell("pass", metadata={"exercise": "9.1", "tags": ["exercise"]})
    )
    nbformat.write(nb, tmp_path / "09_broken.ipynb")
    with pytest.raises(
        course.CourseError, match=r"09_broken.ipynb: exercise 9.1 lacks its check, solution"
    ):
        course.build(tmp_path, tmp_path / "out", slides=False)


def test_build_without_notebooks_is_a_clear_error(tmp_path, capsys):
    assert course.main(["build", "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no notebooks" in capsys.readouterr().err


def test_seminar_guide_assigns_only_exercises_that_exist():
    import re

    guide = (ROOT / "docs" / "teaching.md").read_text()
    existing = set()
    for path in SOURCES:
        existing |= set(course.exercises(nbformat.read(path, as_version=4)))
    named = set(re.findall(r"\b([0-6]\.[1-9])\b", guide.split("## Which exercises to assign")[1]))
    named |= set(re.findall(r"exercises? ([0-6]\.[1-9])", guide))
    assert named, "the guide names no exercise"
    assert named <= existing, (
        f"the guide assigns exercises that do not exist: {sorted(named - existing)}"
    )
