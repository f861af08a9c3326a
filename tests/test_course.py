"""The teaching kit: editions and decks are built from notebooks/ and behave as promised."""

import re
import time
import warnings
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from dcl_teach import course
from tests.plugin import AsyncIpcKernelManager

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    assert course.main(["build", "--source", str(ROOT / "notebooks"), "--out", str(out)]) == 0
    return out


def _outputs(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def _cell(source: str):
    return nbformat.v4.new_code_cell(source)


def _run_editions(source_path: Path):
    """Run the student edition once; at each self-check, also run it on the solution.

    Returns the executed student edition and, per exercise, what its check printed with the
    solution in place of the stub, as the instructor edition would run it. The solution (as the
    instructor edition writes it) and the check run right after the learner's check, in the
    same kernel; then the stub and the check run again, so every later cell sees the learner's
    state. (The cells after a check, run with the solution defined, are the source notebook's
    own order, which nbval executes.) One kernel per notebook instead of one per edition.
    """
    source = nbformat.read(source_path, as_version=4)
    solved_edition = course.instructor_edition(source)
    solutions = {
        c.metadata["exercise"]: c.source
        for c in solved_edition.cells
        if "solved" in course._tags(c)
    }
    # A hung kernel start or a lost reply is an infrastructure failure, not the notebook's:
    # such a run is retried once; a cell that raises fails at once.
    for attempt in (1, 2):
        student = course.student_edition(source)
        stubs = {
            c.metadata["exercise"]: c.source for c in student.cells if "exercise" in course._tags(c)
        }
        client = NotebookClient(
            student,
            timeout=180,
            startup_timeout=120,
            kernel_name="python3",
            kernel_manager_class=AsyncIpcKernelManager,
            resources={"metadata": {"path": str(ROOT / "notebooks")}},
        )
        solved: dict[str, str] = {}
        index = None
        try:
            with client.setup_kernel():
                for index, cell in enumerate(student.cells):
                    if cell.cell_type != "code":
                        continue
                    started = time.monotonic()
                    client.execute_cell(cell, index)
                    if time.monotonic() - started > 30:  # say where a slow edition spends it
                        took = time.monotonic() - started
                        warnings.warn(
                            f"{source_path.name}: cell {index} took {took:.0f} s", stacklevel=2
                        )
                    if "check" not in course._tags(cell):
                        continue
                    number = cell.metadata["exercise"]
                    probe = _cell(cell.source)
                    for step in (_cell(solutions[number]), probe):
                        client.execute_cell(step, index)
                    solved[number] = _outputs(probe)
                    for step in (_cell(stubs[number]), _cell(cell.source)):
                        client.execute_cell(step, index)  # back to the learner's state
                    student.cells[index] = cell  # execute_cell stored each probe in its place
            return student, solved
        except (CellTimeoutError, DeadKernelError, TimeoutError, RuntimeError) as err:
            if attempt == 2:
                raise
            where = "the kernel start" if index is None else f"cell {index}"
            warnings.warn(
                f"{source_path.name}: {where} failed ({err!r:.300}); retrying", stacklevel=2
            )


def test_every_source_notebook_has_complete_exercises():
    for path in SOURCES:
        parts = course.exercises(nbformat.read(path, as_version=4))
        assert len(parts) >= 2, (
            f"{path.name} has {len(parts)} exercises, the course promises two or more"
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_student_edition_runs_and_every_solution_passes_its_check(built, path):
    nb = nbformat.read(built / "student" / path.name, as_version=4)
    assert not [c for c in nb.cells if {"solution", "instructor"} & set(course._tags(c))]
    student, solved = _run_editions(path)
    checks = [c for c in student.cells if "check" in course._tags(c)]
    assert checks and set(solved) == {c.metadata["exercise"] for c in checks}
    for cell in checks:
        assert "not yet implemented" in _outputs(cell), (cell.metadata["exercise"], _outputs(cell))
    errors = [
        o for c in student.cells for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    for number, printed in solved.items():
        assert "correct" in printed and "not yet" not in printed, (number, printed)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_instructor_edition_puts_each_solution_in_place_of_its_stub(built, path):
    source = nbformat.read(path, as_version=4)
    edition = nbformat.read(built / "instructor" / path.name, as_version=4)
    parts = course.exercises(source)
    assert not [c for c in edition.cells if "solution" in course._tags(c)]
    solved = [c for c in edition.cells if "solved" in course._tags(c)]
    assert [c.metadata["exercise"] for c in solved] == list(parts)
    for cell in solved:
        solution = source.cells[parts[cell.metadata["exercise"]]["solution"]].source
        assert cell.source == re.sub(r"\s*# noqa: F811", "", solution)
    kept = [c for c in edition.cells if "solved" not in course._tags(c)]
    dropped = {i for idx in parts.values() for i in (idx["exercise"], idx["solution"])}
    expected = [c for i, c in enumerate(source.cells) if i not in dropped]
    assert len(kept) == len(expected)
    for got, want in zip(kept, expected, strict=True):
        if "instructor" in course._tags(want) and want.cell_type == "markdown":
            assert got.source.startswith("> **Instructor note")
        else:
            assert got.source == want.source


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
    named = set(re.findall(r"\b([0-9]\.[1-9])\b", guide.split("## Which exercises to assign")[1]))
    named |= set(re.findall(r"exercises? ([0-9]\.[1-9])", guide))
    assert named, "the guide names no exercise"
    assert named <= existing, (
        f"the guide assigns exercises that do not exist: {sorted(named - existing)}"
    )
