"""The Colab/Binder badges and install cell: generated, idempotent, and the URL's only source."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

import dcl_teach
from dcl_teach import colab

jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
README = "# Course\n\nIntro.\n\n<!-- badges:start -->\nold badges\n<!-- badges:end -->\n\nBody.\n"

SCRIPT = """\
# %% [markdown]
# # Toy lesson
#
# Goals.

# %%
import numpy as np

x = np.arange(3)
print(x)

# %% [markdown]
# More.

# %%
print(x.sum())
"""


def make_repo(tmp_path: Path, *, readme: str = README) -> Path:
    """A toy checkout: README with markers, one notebook paired as the course pairs them."""
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    script = tmp_path / "notebooks" / "00_toy.py"
    script.write_text(SCRIPT, encoding="utf-8")
    nb = jupytext.reads(SCRIPT, fmt="py:percent")
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="[0 1 2]\n")]
    nb.cells[1].execution_count = 1
    nbformat.write(nb, tmp_path / "notebooks" / "00_toy.ipynb")
    jupytext.write(nb, script, fmt="py:percent")  # the pair as `jupytext --sync` leaves it
    return tmp_path


def tags(nb) -> list[str]:
    return [(c.metadata.get("tags") or ["-"])[0] for c in nb.cells]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- URLs and versions


def test_ref_follows_the_package_version():
    assert colab.BRANCH_OR_TAG == colab.git_ref(dcl_teach.__version__)
    assert colab.git_ref("0.1.0") == "v0.1.0"
    assert colab.git_ref("1.0.0.dev3") == "main"
    with pytest.raises(ValueError, match="expected a version such as '0.1.0', got 'latest'"):
        colab.git_ref("latest")


def test_repo_slug_rejects_a_non_github_url():
    assert colab.repo_slug() == colab.REPO_URL.removeprefix("https://github.com/")
    with pytest.raises(ValueError, match="expected https://github.com/OWNER/NAME"):
        colab.repo_slug("https://gitlab.com/o/r")


# --------------------------------------------------------------------------- notebooks


def test_regeneration_adds_both_cells_and_keeps_the_rest(tmp_path):
    root = make_repo(tmp_path)
    before = nbformat.read(root / "notebooks" / "00_toy.ipynb", as_version=4)
    assert colab.main(["--root", str(root)]) == 0
    nb = nbformat.read(root / "notebooks" / "00_toy.ipynb", as_version=4)
    assert tags(nb) == ["colab-badge", "-", "colab-install", "-", "-", "-"]
    assert nb.cells[0].source == colab.badge_cell_source("notebooks/00_toy.ipynb")
    assert f"blob/{colab.BRANCH_OR_TAG}/notebooks/00_toy.ipynb" in nb.cells[0].source
    assert nb.cells[2].source == colab.install_cell_source()
    assert nb.cells[1] == before.cells[0] and nb.cells[3:] == before.cells[1:]  # outputs kept
    script = jupytext.read(root / "notebooks" / "00_toy.py")
    assert [c.source for c in script.cells] == [c.source for c in nb.cells]
    assert tags(script) == tags(nb)


def test_regeneration_is_idempotent(tmp_path):
    root = make_repo(tmp_path)
    assert colab.regenerate(root) != []
    once = snapshot(root)
    assert colab.regenerate(root) == []
    assert snapshot(root) == once
    assert colab.main(["--root", str(root), "--check"]) == 0


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) or ["(none yet)"]
)
def test_regeneration_is_idempotent_on_a_copy_of_each_course_notebook(tmp_path, name):
    if name == "(none yet)":
        pytest.skip("no notebook in notebooks/ yet")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "README.md").write_text(README, encoding="utf-8")
    for suffix in (".ipynb", ".py"):
        src = ROOT / "notebooks" / Path(name).with_suffix(suffix)
        if src.exists():
            shutil.copy(src, tmp_path / "notebooks" / src.name)
    before = nbformat.read(tmp_path / "notebooks" / name, as_version=4)
    colab.regenerate(tmp_path)
    once = snapshot(tmp_path)
    assert colab.regenerate(tmp_path) == []
    assert snapshot(tmp_path) == once
    after = nbformat.read(tmp_path / "notebooks" / name, as_version=4)
    ours = {"colab-badge", "colab-install"}
    keep = [c for c in after.cells if not ours & set(c.metadata.get("tags", []))]
    assert keep == [c for c in before.cells if not ours & set(c.metadata.get("tags", []))]


def test_check_detects_a_stale_badge_and_changes_nothing(tmp_path, capsys):
    root = make_repo(tmp_path)
    colab.regenerate(root)
    path = root / "notebooks" / "00_toy.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace(colab.BRANCH_OR_TAG, "v0.0.1")
    nbformat.write(nb, path)
    stale = snapshot(root)
    assert colab.main(["--root", str(root), "--check"]) == 1
    assert "stale: notebooks/00_toy.ipynb" in capsys.readouterr().out
    assert snapshot(root) == stale
    assert colab.main(["--root", str(root)]) == 0
    assert colab.main(["--root", str(root), "--check"]) == 0


def test_check_detects_a_stale_install_cell_in_the_script_alone(tmp_path, capsys):
    root = make_repo(tmp_path)
    colab.regenerate(root)
    script = root / "notebooks" / "00_toy.py"
    script.write_text(
        script.read_text(encoding="utf-8").replace('"-q", spec', "spec"), encoding="utf-8"
    )
    assert colab.main(["--root", str(root), "--check"]) == 1
    assert capsys.readouterr().out.strip() == "stale: notebooks/00_toy.py"


def test_a_moved_install_cell_goes_back_before_the_first_code_cell(tmp_path):
    root = make_repo(tmp_path)
    colab.regenerate(root)
    path = root / "notebooks" / "00_toy.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nb.cells.pop(2))
    nbformat.write(nb, path)
    assert colab.regenerate(root, check=True) == [path]
    colab.regenerate(root)
    assert tags(nbformat.read(path, as_version=4))[2] == "colab-install"


# --------------------------------------------------------------------------- the install cell


def test_install_cell_does_nothing_and_prints_nothing_off_colab(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(colab.install_cell_source(), {})
    assert calls == []
    assert capsys.readouterr() == ("", "")


def test_install_cell_pip_installs_the_matching_version_on_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append((a, k)))
    exec(colab.install_cell_source(), {})
    spec = f"dcl-teach @ git+{colab.REPO_URL}@{colab.BRANCH_OR_TAG}"
    assert calls == [(([sys.executable, "-m", "pip", "install", "-q", spec],), {"check": True})]


# --------------------------------------------------------------------------- README


def test_readme_only_the_marked_region_changes(tmp_path):
    root = make_repo(tmp_path)
    colab.regenerate(root)
    text = (root / "README.md").read_text(encoding="utf-8")
    head, rest = text.split("<!-- badges:start -->\n")
    region, tail = rest.split("<!-- badges:end -->")
    assert head == "# Course\n\nIntro.\n\n" and tail == "\n\nBody.\n"
    assert region == colab.readme_badges(["notebooks/00_toy.ipynb"]) + "\n"
    assert (
        f"mybinder.org/v2/gh/{colab.repo_slug()}/" in region
        and "colab.research.google.com" in region
    )


def test_readme_optional_install_region(tmp_path):
    root = make_repo(tmp_path, readme=README + "\n<!-- install:start -->\n<!-- install:end -->\n")
    colab.regenerate(root)
    text = (root / "README.md").read_text(encoding="utf-8")
    assert f"git clone {colab.REPO_URL}.git\n" in text
    assert f'pip install "{colab.package_spec()}"' in text


@pytest.mark.parametrize(
    "readme",
    ["# no markers\n", "<!-- badges:end -->\n<!-- badges:start -->\n"],
    ids=["missing", "reversed"],
)
def test_readme_without_proper_markers_is_an_error(tmp_path, readme, capsys):
    root = make_repo(tmp_path, readme=readme)
    assert colab.main(["--root", str(root), "--check"]) == 2
    assert "badges:start" in capsys.readouterr().err


# --------------------------------------------------------------------------- the checked-in repository


def _readme_has_markers() -> bool:
    readme = ROOT / "README.md"
    return readme.exists() and colab.BADGES_START in readme.read_text(encoding="utf-8")


@pytest.mark.skipif(
    not _readme_has_markers(), reason="README.md has no <!-- badges:start --> markers yet"
)
def test_repository_is_up_to_date(capsys):
    code = colab.main(["--check"])
    assert code == 0, f"run `python -m dcl_teach.colab`:\n{capsys.readouterr().out}"


def stray_mentions(root: Path, files: list[str]) -> list[str]:
    """Files that name the repository outside colab.py and outside fresh generated text."""
    slug = colab.repo_slug().lower()
    notebooks = colab.notebook_files(root)
    owner = {str(f.relative_to(root)): nb for nb, pair in notebooks.items() for f in pair}
    stray = []
    for rel in files:
        path = root / rel
        if rel == "dcl_teach/colab.py" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if slug not in text.lower():
            continue
        if rel == "README.md" and colab.update_readme(text, list(notebooks)) == text:
            for start, end in [
                (colab.BADGES_START, colab.BADGES_END),
                (colab.INSTALL_START, colab.INSTALL_END),
            ]:
                if start in text:
                    text = text[: text.index(start)] + text[text.index(end) :]
        elif rel in owner:
            nb = (
                nbformat.reads(text, as_version=4)
                if rel.endswith(".ipynb")
                else jupytext.reads(text, fmt="py:percent")
            )
            fresh = {
                colab.badge_cell_source(owner[rel]): colab.BADGE_TAG,
                colab.install_cell_source(): colab.INSTALL_TAG,
            }
            nb.cells = [
                c for c in nb.cells if fresh.get(c.source) not in c.metadata.get("tags", [])
            ]
            text = json.dumps(nb)
        if slug in text.lower():
            stray.append(rel)
    return stray


def test_stray_mentions_are_found_in_a_toy_repo(tmp_path):
    root = make_repo(tmp_path)
    colab.regenerate(root)
    (root / "docs.md").write_text(f"see {colab.REPO_URL}\n", encoding="utf-8")
    (root / "clean.md").write_text("nothing here\n", encoding="utf-8")
    files = ["README.md", "docs.md", "clean.md", "notebooks/00_toy.ipynb", "notebooks/00_toy.py"]
    assert stray_mentions(root, files) == ["docs.md"]
    path = (
        root / "notebooks" / "00_toy.ipynb"
    )  # a hand-edited badge is no longer the generated form
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source += " (fork me)"
    nbformat.write(nb, path)
    readme = root / "README.md"
    readme.write_text(
        readme.read_text(encoding="utf-8").replace(colab.BRANCH_OR_TAG, "old-tag"), encoding="utf-8"
    )
    assert stray_mentions(root, files) == ["README.md", "docs.md", "notebooks/00_toy.ipynb"]


def test_repository_url_lives_only_in_colab_py():
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [f for f in listed.decode().split("\0") if f]
    assert stray_mentions(ROOT, files) == []


def test_cells_whose_tags_were_dropped_are_recognised_not_duplicated(tmp_path):
    root = make_repo(tmp_path)
    colab.regenerate(root)
    script = root / "notebooks" / "00_toy.py"
    untagged = script.read_text(encoding="utf-8").replace(' tags=["colab-badge"]', "")
    script.write_text(untagged.replace(' tags=["colab-install"]', ""), encoding="utf-8")
    assert colab.regenerate(root) == [script]
    nb = jupytext.read(script)
    assert tags(nb) == ["colab-badge", "-", "colab-install", "-", "-", "-"]
