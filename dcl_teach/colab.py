"""Ways into the course from a browser: Colab and Binder badges, and the Colab install cell.

The repository URL lives here and only here. ``python -m dcl_teach.colab`` regenerates, from
:data:`REPO_URL` and the package version, every place that needs it:

* in every notebook of ``notebooks/`` (the ``.ipynb`` and its paired ``py:percent`` script), a
  markdown cell tagged ``colab-badge`` at the top, and a code cell tagged ``colab-install`` just
  before the first other code cell that, on Colab only, installs this package at the version the
  notebook was written for (off Colab it does nothing and prints nothing, so nbval and a local
  "Run All" are unaffected);
* in ``README.md``, the Binder and Colab badges between ``<!-- badges:start -->`` and
  ``<!-- badges:end -->``, and, if the README has them, the install commands between
  ``<!-- install:start -->`` and ``<!-- install:end -->``. Nothing outside the markers changes.

Cells are found by their tag, so regenerating is idempotent; other cells, their outputs included,
are left as they are. ``--check`` changes nothing and exits 1 if anything would change.

Re-run after adding or renaming a notebook and after bumping the version::

    python -m dcl_teach.colab          # rewrite
    python -m dcl_teach.colab --check  # what CI runs (through tests/test_colab.py)
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from dcl_teach import __version__
from dcl_teach.atomic import atomic_write

REPO_URL = "https://github.com/dcl-teach/dcl-teach"
"""The one place the repository's address is written down."""

BADGE_TAG = "colab-badge"
INSTALL_TAG = "colab-install"
INSTALL_FIRST_LINE = "# On Google Colab only: install this course's package"
BADGES_START, BADGES_END = "<!-- badges:start -->", "<!-- badges:end -->"
INSTALL_START, INSTALL_END = "<!-- install:start -->", "<!-- install:end -->"
NOTEBOOK_DIR = "notebooks"
PAIRED_SUFFIX = ".py"  # jupytext.toml pairs every notebook with a py:percent script beside it

COLAB_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_BADGE_SVG = "https://mybinder.org/badge_logo.svg"


def git_ref(version: str) -> str:
    """The git ref whose notebooks match a package version.

    A release ``X.Y.Z`` is tagged ``vX.Y.Z``; a development or local version has no tag yet, so
    its badges point at ``main``.

    Args:
        version: a PEP 440 version string, e.g. ``dcl_teach.__version__``.

    Returns:
        ``"v" + version`` for a release, ``"main"`` otherwise.

    Raises:
        ValueError: if ``version`` does not start with a release number such as ``0.1.0``.

    Example:
        >>> git_ref("0.1.0"), git_ref("0.2.0.dev1"), git_ref("0.1.0+g1234")
        ('v0.1.0', 'main', 'main')
    """
    if not re.match(r"\d+(\.\d+)*", version):
        raise ValueError(f"expected a version such as '0.1.0', got {version!r}")
    if ".dev" in version or "+" in version:
        return "main"
    return f"v{version}"


BRANCH_OR_TAG = git_ref(__version__)
"""Ref the badges and the Colab install point at: the tag of this version."""


def repo_slug(repo_url: str = REPO_URL) -> str:
    """``owner/name`` of a GitHub repository URL.

    Raises:
        ValueError: if the URL is not a github.com repository URL.

    Example:
        >>> repo_slug("https://github.com/dcl-teach/dcl-teach.git")
        'dcl-teach/dcl-teach'
    """
    prefix = "https://github.com/"
    rest = repo_url.removeprefix(prefix).rstrip("/").removesuffix(".git")
    parts = rest.split("/")
    if not repo_url.startswith(prefix) or len(parts) != 2 or not all(parts):
        raise ValueError(f"expected https://github.com/OWNER/NAME, got {repo_url!r}")
    return rest


SLUG = repo_slug(REPO_URL)


def raw_url(path: str) -> str:
    """Address of one file of the repository at this version, for a download without a clone.

    Example:
        >>> raw_url("results/digits-sweep/results.json").endswith("/results/digits-sweep/results.json")
        True
    """
    return f"https://raw.githubusercontent.com/{SLUG}/{BRANCH_OR_TAG}/{path}"


def colab_url(notebook: str) -> str:
    """Colab's address for a notebook of the repository (``notebooks/NN_x.ipynb``).

    Example:
        >>> colab_url("notebooks/a.ipynb").startswith("https://colab.research.google.com/github/")
        True
    """
    return f"https://colab.research.google.com/github/{SLUG}/blob/{BRANCH_OR_TAG}/{notebook}"


def binder_url(notebook: str = "") -> str:
    """mybinder.org's address that builds the repository and opens ``notebook`` in JupyterLab.

    Example:
        >>> binder_url().endswith("?urlpath=lab")
        True
    """
    urlpath = f"lab/tree/{notebook}" if notebook else "lab"
    return f"https://mybinder.org/v2/gh/{SLUG}/{BRANCH_OR_TAG}?urlpath={urlpath}"


def package_spec() -> str:
    """PEP 508 requirement that installs this package from git at this version's tag."""
    return f"dcl-teach @ git+{REPO_URL}@{BRANCH_OR_TAG}"


def badge_cell_source(notebook: str) -> str:
    """Markdown of the badge cell at the top of a notebook: its Colab and Binder badges."""
    colab = f"[![Open In Colab]({COLAB_BADGE_SVG})]({colab_url(notebook)})"
    binder = f"[![Binder]({BINDER_BADGE_SVG})]({binder_url(notebook)})"
    return f"{colab}\n{binder}"  # one badge a line: a lone link is exempt from E501


def install_cell_source() -> str:
    """Python of the install cell: pip-installs the package, on Colab only.

    A plain ``subprocess`` call rather than ``%pip``: jupytext comments out a magic, and an
    ``if`` whose only body is a comment is a syntax error in the paired script. The argument
    list needs no shell quoting, and ``sys.executable`` is the kernel's own Python, as for
    ``%pip``. The base package only: Colab brings its own Jupyter and a CUDA PyTorch, which
    satisfies ``torch>=2.2`` and is kept.

    Example:
        >>> exec(install_cell_source())  # not on Colab: does nothing
    """
    return (
        f"{INSTALL_FIRST_LINE} at the version of this notebook.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    spec = "{package_spec()}"\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)'
    )


def readme_badges(notebooks: Sequence[str]) -> str:
    """Markdown between the README's badge markers: Binder on the repository, Colab on the
    first notebook."""
    first = sorted(notebooks)[0] if notebooks else None
    target = colab_url(first) if first else "https://colab.research.google.com/"
    return (
        f"[![Binder]({BINDER_BADGE_SVG})]({binder_url()})\n"
        f"[![Open In Colab]({COLAB_BADGE_SVG})]({target})"
    )


def readme_install() -> str:
    """Markdown between the README's optional install markers: the commands that need the URL."""
    return (
        "```bash\n"
        f"git clone {REPO_URL}.git\n"
        "cd dcl-teach\n"
        "```\n"
        "\n"
        "or, for the package alone (no notebooks):\n"
        "\n"
        "```bash\n"
        f'pip install "{package_spec()}"\n'
        "```"
    )


def _replace_region(text: str, start: str, end: str, body: str, *, required: bool) -> str:
    """``text`` with everything strictly between the ``start`` and ``end`` lines set to ``body``."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0:
        if required:
            raise ValueError(f"README has no {start} ... {end} markers")
        return text
    if j < i or text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"README needs exactly one {start} followed by one {end}")
    return f"{text[: i + len(start)]}\n{body}\n{text[j:]}"


def update_readme(text: str, notebooks: Sequence[str]) -> str:
    """README text with the generated regions refreshed and nothing else touched.

    Args:
        text: the README.
        notebooks: repository paths of the notebooks.

    Returns:
        The new README text.

    Raises:
        ValueError: if the badge markers are missing, repeated or out of order.

    Example:
        >>> t = "# T\\n<!-- badges:start -->\\nold\\n<!-- badges:end -->\\nrest\\n"
        >>> new = update_readme(t, ["notebooks/a.ipynb"])
        >>> new.startswith("# T\\n<!-- badges:start -->\\n[![Binder]"), new.endswith("-->\\nrest\\n")
        (True, True)
    """
    text = _replace_region(text, BADGES_START, BADGES_END, readme_badges(notebooks), required=True)
    return _replace_region(text, INSTALL_START, INSTALL_END, readme_install(), required=False)


def _ours(cell: dict) -> str | None:
    """Which generated cell this is: by its tag, or, should a tool have dropped the tags, by
    its content (so a lost tag never makes a second copy)."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    for tag in (BADGE_TAG, INSTALL_TAG):
        if tag in tags:
            return tag
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    if cell.get("cell_type") == "markdown" and COLAB_BADGE_SVG in source:
        return BADGE_TAG
    if cell.get("cell_type") == "code" and source.startswith(INSTALL_FIRST_LINE):
        return INSTALL_TAG
    return None


def _new_cell(cell_type: str, source: str, tag: str, *, with_id: bool) -> dict:
    metadata = {"slideshow": {"slide_type": "skip"}, "tags": [tag]}  # not a slide (RISE)
    cell: dict = {"cell_type": cell_type, "metadata": metadata, "source": source}
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    if with_id:
        cell["id"] = tag  # fixed ids keep regeneration idempotent
    return cell


def _wanted(old: dict | None, new: dict) -> dict:
    """The old cell if it already says the same thing (its id and run count are kept)."""
    if old is not None and old.get("cell_type") == new["cell_type"]:
        source = old.get("source", "")
        same = ("".join(source) if isinstance(source, list) else source) == new["source"]
        meta = old.get("metadata", {})
        if same and all(meta.get(k) == v for k, v in new["metadata"].items()):
            return old
    return new


def _keep_tags(metadata: dict) -> None:
    """Let jupytext write cell tags to the paired script (its filter may say ``-all``)."""
    jt = metadata.get("jupytext", {})
    entries = [e for e in str(jt.get("cell_metadata_filter", "")).split(",") if e]
    if entries and "tags" not in entries and "all" not in entries:
        jt["cell_metadata_filter"] = ",".join(["tags"] + [e for e in entries if e != "-tags"])


def update_cells(nb: dict, notebook: str) -> dict:
    """A copy of a notebook with its badge and install cells regenerated.

    The badge cell goes first; the install cell goes right before the first other code cell
    (after the title and goals, before the setup cell). Every other cell is kept as it is.

    Args:
        nb: notebook as a dict (``nbformat`` or ``jupytext`` node, or plain JSON).
        notebook: path of the notebook inside the repository, used in the badge links.

    Returns:
        The updated notebook; ``nb`` is not modified.

    Example:
        >>> nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        ...     {"cell_type": "markdown", "id": "t", "metadata": {}, "source": "# Title"},
        ...     {"cell_type": "code", "id": "s", "metadata": {}, "source": "x = 1",
        ...      "execution_count": None, "outputs": []}]}
        >>> new = update_cells(nb, "notebooks/a.ipynb")
        >>> [c["metadata"].get("tags", ["-"])[0] for c in new["cells"]]
        ['colab-badge', '-', 'colab-install', '-']
        >>> update_cells(new, "notebooks/a.ipynb") == new
        True
    """
    nb = copy.deepcopy(nb)
    with_id = (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5)
    old = {_ours(c): c for c in nb["cells"]}
    badge = _new_cell("markdown", badge_cell_source(notebook), BADGE_TAG, with_id=with_id)
    install = _new_cell("code", install_cell_source(), INSTALL_TAG, with_id=with_id)
    cells = [c for c in nb["cells"] if _ours(c) is None]
    first_code = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), len(cells))
    cells.insert(first_code, _wanted(old.get(INSTALL_TAG), install))
    cells.insert(0, _wanted(old.get(BADGE_TAG), badge))
    nb["cells"] = cells
    _keep_tags(nb.setdefault("metadata", {}))
    return nb


def _render_ipynb(path: Path, notebook: str) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    new = nbformat.from_dict(update_cells(nb, notebook))
    text = nbformat.writes(new)
    return text if text.endswith("\n") else text + "\n"


def _render_script(path: Path, notebook: str) -> str:
    import jupytext
    import nbformat

    text = path.read_text(encoding="utf-8")
    nb = jupytext.reads(text, fmt="py:percent")
    new = nbformat.from_dict(update_cells(nb, notebook))
    for cell in new.cells:  # a text notebook stores no cell ids
        cell.pop("id", None)
    return jupytext.writes(new, fmt="py:percent")


def notebook_files(root: Path) -> dict[str, list[Path]]:
    """Notebooks under ``root/notebooks``: repository path of the ``.ipynb`` -> files of the pair.

    A notebook that exists only as its paired script counts too (its ``.ipynb`` is not written
    by this module; ``jupytext --sync`` makes it).
    """
    folder = root / NOTEBOOK_DIR
    stems = sorted(
        {p.stem for p in folder.glob("*.ipynb")}
        | {p.stem for p in folder.glob(f"*{PAIRED_SUFFIX}")}
    )
    found = {}
    for stem in stems:
        files = [folder / f"{stem}{suffix}" for suffix in (".ipynb", PAIRED_SUFFIX)]
        found[f"{NOTEBOOK_DIR}/{stem}.ipynb"] = [f for f in files if f.exists()]
    return found


def regenerate(root: Path, *, check: bool = False) -> list[Path]:
    """Regenerate the badges and install cells of a checkout.

    Args:
        root: repository root (holds ``README.md`` and ``notebooks/``).
        check: only report; write nothing.

    Returns:
        The files that changed (or, with ``check``, would change).

    Raises:
        ValueError: if ``README.md`` is missing or has no badge markers.
    """
    notebooks = notebook_files(root)
    new_text: dict[Path, str] = {}
    for notebook, files in notebooks.items():
        for path in files:  # the .ipynb first, then its script: the script must end up newer
            render = _render_ipynb if path.suffix == ".ipynb" else _render_script
            new_text[path] = render(path, notebook)
    readme = root / "README.md"
    if not readme.exists():
        raise ValueError(f"{readme} not found")
    new_text[readme] = update_readme(readme.read_text(encoding="utf-8"), list(notebooks))

    changed = [p for p, text in new_text.items() if p.read_text(encoding="utf-8") != text]
    if not check:
        for path in changed:
            atomic_write(path, new_text[path])
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m dcl_teach.colab [--check] [--root DIR]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m dcl_teach.colab", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if anything is stale"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="repository root (default: this checkout)",
    )
    args = parser.parse_args(argv)
    try:
        changed = regenerate(args.root, check=args.check)
    except (ValueError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in changed:
        print(f"{'stale' if args.check else 'updated'}: {path.relative_to(args.root)}")
    if args.check and changed:
        print("fix: python -m dcl_teach.colab", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
