"""Every notebook and its py:percent pair hold the same cells (sources, types, metadata)."""

from pathlib import Path

import jupytext
import pytest
from jupytext.compare import NotebookDifference, compare_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def out_of_sync(ipynb: Path, script: Path) -> str | None:
    """The difference between a notebook and its pair, or None when they agree."""
    try:
        compare_notebooks(
            jupytext.read(script, fmt="py:percent"), jupytext.read(ipynb), fmt="py:percent"
        )
    except NotebookDifference as err:
        return str(err)
    return None


def test_every_notebook_is_paired():
    assert [nb.stem[:2] for nb in NOTEBOOKS] == [f"{k:02d}" for k in range(len(NOTEBOOKS))]
    assert len(NOTEBOOKS) >= 10  # 00 to 09: a lost notebook fails here
    assert "ipynb,py:percent" in (ROOT / "jupytext.toml").read_text()
    for nb in NOTEBOOKS:
        assert nb.with_suffix(".py").exists(), f"{nb.name} has no py:percent pair"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(nb):
    problem = out_of_sync(nb, nb.with_suffix(".py"))
    assert problem is None, f"{nb.name} and its .py differ (fix: jupytext --sync {nb}):\n{problem}"


def test_an_edit_to_one_side_is_detected(tmp_path):
    nb = NOTEBOOKS[0]
    script = tmp_path / nb.with_suffix(".py").name
    text = nb.with_suffix(".py").read_text()
    script.write_text(text.replace("import torch", "import torch  # edited", 1))
    assert out_of_sync(nb, script) is not None
