"""pyproject.toml, environment.yml and binder/ describe the same package.

Every runtime dependency of the package must be in each environment with a floor that the
package accepts; the Python floors agree; Binder's image is CPU-only and installs the package.
The checker is tested on deliberately broken toy configurations, so it can fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

# PyPI name -> conda-forge name, where they differ beyond '-'/'_' spelling.
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}


# --------------------------------------------------------------------------- parsing


def pyproject_requirements(
    pyproject: dict, *, extras: tuple[str, ...] = ()
) -> dict[str, SpecifierSet]:
    """Canonical name -> specifier of the [project] dependencies (and the given extras)."""
    lines = list(pyproject["project"]["dependencies"])
    for extra in extras:
        lines += pyproject["project"]["optional-dependencies"][extra]
    own = canonicalize_name(pyproject["project"]["name"])
    reqs = [Requirement(line) for line in lines]
    return {
        canonicalize_name(r.name): r.specifier for r in reqs if canonicalize_name(r.name) != own
    }


def conda_spec(spec: str) -> tuple[str, SpecifierSet]:
    """Parse a conda match spec such as ``pytorch>=2.2`` or ``python=3.11`` (no build strings).

    >>> conda_spec("python=3.11")
    ('python', <SpecifierSet('==3.11.*')>)
    >>> conda_spec("numpy >=1.24,<3")
    ('numpy', <SpecifierSet('<3,>=1.24')>)
    """
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", spec)
    version = re.sub(r"\s*,\s*", ",", match[2]) if match else " "
    if re.search(r"\s", version):  # a build string, or not a spec at all
        raise ValueError(f"cannot read conda spec {spec!r}")
    if re.fullmatch(r"=?\d.*", version):  # conda's '=3.11' and '3.11' mean '3.11.*'
        version = "==" + version.lstrip("=") + ("" if version.endswith("*") else ".*")
    name = match[1]
    return canonicalize_name(name), SpecifierSet(version)


def environment_requirements(env: dict) -> tuple[dict[str, SpecifierSet], list[str]]:
    """Conda dependencies (canonical name -> specifier) and the pip list of an environment.yml."""
    conda, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep.get("pip", [])
        else:
            name, spec = conda_spec(dep)
            conda[name] = spec
    for line in pip:
        if not line.startswith("-"):
            req = Requirement(line)
            conda[canonicalize_name(req.name)] = req.specifier
    return conda, pip


def requirements_txt(text: str) -> tuple[dict[str, SpecifierSet], list[str]]:
    """Requirements (canonical name -> specifier) and option lines of a requirements.txt."""
    reqs, options = {}, []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        req = Requirement(line)
        reqs[canonicalize_name(req.name)] = req.specifier
    return reqs, options


# --------------------------------------------------------------------------- the checker


def floor(spec: SpecifierSet) -> Version | None:
    """The lowest version a specifier names as allowed (``>=``, ``==``, ``~=``), if any."""
    floors = [
        Version(s.version.rstrip(".*")) for s in spec if s.operator in (">=", "==", "~=", "===")
    ]
    return max(floors, default=None)


def has_ceiling(spec: SpecifierSet) -> bool:
    return any(s.operator in ("<", "<=", "==", "~=", "===") for s in spec)


def dependency_problems(
    package: dict[str, SpecifierSet],
    env: dict[str, SpecifierSet],
    *,
    names: dict[str, str] | None = None,
) -> list[str]:
    """What makes an environment disagree with the package's requirements (empty: consistent).

    Each requirement of the package must be in the environment (under its mapped name), with a
    floor that the package accepts and the environment's own specifier allows; a ceiling in
    the package must be matched by one in the environment.
    """
    names = names or {}
    problems = []
    for pypi_name, wanted in package.items():
        name = canonicalize_name(names.get(pypi_name, pypi_name))
        if name not in env:
            problems.append(f"{pypi_name}: missing (looked for {name!r})")
            continue
        have = env[name]
        low = floor(have)
        if low is None:
            problems.append(f"{pypi_name}: {name}{have} has no floor; expected one within {wanted}")
        elif not wanted.contains(low, prereleases=True):
            problems.append(
                f"{pypi_name}: floor {low} of {name}{have} is outside the package's {wanted}"
            )
        elif not have.contains(low, prereleases=True):
            problems.append(f"{pypi_name}: {name}{have} allows no version at all")
        if has_ceiling(wanted) and not has_ceiling(have):
            problems.append(
                f"{pypi_name}: the package caps it ({wanted}) but {name}{have} does not"
            )
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def environment_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def binder_requirements() -> tuple[dict[str, SpecifierSet], list[str]]:
    return requirements_txt((ROOT / "binder" / "requirements.txt").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the checker can fail


def test_checker_accepts_a_consistent_toy_config():
    package = {"torch": SpecifierSet(">=2.2"), "numpy": SpecifierSet(">=1.24,<3")}
    env = {"pytorch": SpecifierSet(">=2.2"), "numpy": SpecifierSet(">=1.26,<3")}
    assert dependency_problems(package, env, names=CONDA_NAMES) == []


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"numpy": SpecifierSet(">=1.24")}, "torch: missing (looked for 'pytorch')"),
        (
            {"pytorch": SpecifierSet(">=2.1"), "numpy": SpecifierSet(">=1.24")},
            "floor 2.1 of pytorch>=2.1 is outside",
        ),
        ({"pytorch": SpecifierSet(""), "numpy": SpecifierSet(">=1.24")}, "has no floor"),
        (
            {"pytorch": SpecifierSet(">=2.2,<2.0"), "numpy": SpecifierSet(">=1.24")},
            "allows no version at all",
        ),
        ({"torch": SpecifierSet(">=2.2"), "numpy": SpecifierSet(">=1.24")}, "torch: missing"),
    ],
)
def test_checker_reports_an_inconsistent_toy_config(env, complaint):
    package = {"torch": SpecifierSet(">=2.2"), "numpy": SpecifierSet(">=1.24")}
    problems = dependency_problems(package, env, names=CONDA_NAMES)
    assert any(complaint in p for p in problems), problems


def test_checker_reports_a_missing_ceiling():
    problems = dependency_problems(
        {"numpy": SpecifierSet(">=1.24,<3")}, {"numpy": SpecifierSet(">=1.24")}
    )
    assert problems == ["numpy: the package caps it (<3,>=1.24) but numpy>=1.24 does not"]


def test_conda_spec_reads_single_equals_and_rejects_build_strings():
    assert conda_spec("python=3.11")[1].contains("3.11.4")
    assert not conda_spec("python=3.11")[1].contains("3.12.0")
    with pytest.raises(ValueError, match="cannot read conda spec"):
        conda_spec("pytorch 2.2 cpu_*")


# --------------------------------------------------------------------------- environment.yml


def test_environment_yml_is_conda_forge_only(environment_yml):
    assert environment_yml["channels"][0] == "conda-forge"
    assert set(environment_yml["channels"]) <= {"conda-forge", "nodefaults"}


@pytest.mark.parametrize("extras", [(), ("course",), ("test",)], ids=["runtime", "course", "test"])
def test_environment_yml_has_every_dependency(pyproject, environment_yml, extras):
    env, _ = environment_requirements(environment_yml)
    package = pyproject_requirements(pyproject, extras=extras)
    assert dependency_problems(package, env, names=CONDA_NAMES) == []


def test_environment_yml_python_floor_is_the_package_floor(pyproject, environment_yml):
    env, _ = environment_requirements(environment_yml)
    assert floor(env["python"]) == floor(SpecifierSet(pyproject["project"]["requires-python"]))


def test_environment_yml_installs_the_package_with_pip(environment_yml):
    env, pip = environment_requirements(environment_yml)
    assert "pip" in env
    assert "-e ." in pip
    assert "torch" not in env, "PyTorch comes from conda-forge (pytorch), not from pip"


# --------------------------------------------------------------------------- binder/


def test_binder_has_every_runtime_and_course_dependency(pyproject, binder_requirements):
    reqs, _ = binder_requirements
    package = pyproject_requirements(pyproject, extras=("course",))
    assert dependency_problems(package, reqs) == []


def test_binder_torch_is_the_cpu_build(binder_requirements):
    reqs, options = binder_requirements
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in options
    assert not [name for name in reqs if name.startswith("nvidia")]


def test_binder_python_satisfies_the_package(pyproject):
    runtime = (ROOT / "binder" / "runtime.txt").read_text(encoding="utf-8").strip()
    match = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert match, f"binder/runtime.txt should read 'python-X.Y', got {runtime!r}"
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(f"{match[1]}.0")


def test_binder_postbuild_installs_the_package_without_resolving_torch_again():
    post_build = ROOT / "binder" / "postBuild"
    text = post_build.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash\n")
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    install = [line for line in text.splitlines() if re.search(r"\bpip install\b", line)]
    assert install and all(
        "--no-deps" in line and line.rstrip().endswith("-e .") for line in install
    )


def test_binder_postbuild_is_executable_in_git():
    try:
        out = subprocess.run(
            ["git", "ls-files", "-s", "binder/postBuild"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    if not out:
        pytest.skip("binder/postBuild is not committed yet")
    assert out.startswith("100755 "), (
        f"commit binder/postBuild with mode 100755, got: {out.strip()}"
    )


def test_binder_postbuild_parses_as_bash():
    result = subprocess.run(
        ["bash", "-n", str(ROOT / "binder" / "postBuild")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
