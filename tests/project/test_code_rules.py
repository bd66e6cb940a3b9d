"""The code's rules run as tests: import-linter's contracts (pyproject.toml), mypy
and ruff pass on the tree, and each of them fails on a deliberate violation made
in a copy of the tree, so none of these checks can pass vacuously."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ("api", "shared", "worker", "ml", "tussis", "migrations", "scripts")


def run(tool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the code and its configuration, to break on purpose."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n" + code + "\n")


def test_import_contracts_hold() -> None:
    result = run("lint-imports")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("api/health.py", "import ml.model  # noqa", "The API never imports model code"),
        ("api/health.py", "import librosa  # noqa", "The API never imports model code"),
        ("shared/db.py", "import api  # noqa", "shared is the bottom layer"),
        ("ml/bundle.py", "import worker.tasks  # noqa", "ml is imported by the worker"),
        ("tussis/client.py", "import shared.config  # noqa", "The client package needs"),
        ("worker/tasks.py", "import worker.celery_app  # noqa", "Nobody imports the Celery"),
        ("worker/runtime.py", "import worker.tasks  # noqa", "No import cycles"),
    ],
)
def test_each_contract_fails_on_a_violation(
    tree: Path, module: str, line: str, contract: str
) -> None:
    append(tree / module, line)
    result = run("lint-imports", cwd=tree)
    assert result.returncode != 0
    # The report's "Broken contracts" section names the contract this line breaks.
    assert "Broken contracts" in result.stdout, result.stdout
    assert contract in result.stdout.split("Broken contracts", 1)[1], result.stdout


def test_mypy_is_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_fails_on_a_type_error(tree: Path) -> None:
    append(tree / "shared" / "jobs.py", 'def _broken() -> int:\n    return "not an int"')
    result = run("mypy", cwd=tree)
    assert result.returncode != 0
    assert (
        "shared/jobs.py" in result.stdout and "incompatible return value" in result.stdout.lower()
    )


def test_mypy_fails_on_an_untyped_function(tree: Path) -> None:
    append(tree / "ml" / "splits.py", "def _untyped(x):\n    return x")
    result = run("mypy", cwd=tree)
    assert result.returncode != 0
    assert "missing a type annotation" in result.stdout


def test_ruff_is_clean() -> None:
    for args in (("check", "."), ("format", "--check", ".")):
        result = run("ruff", *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_says_what_it_holds() -> None:
    missing = []
    for package in ("api", "shared", "worker", "ml", "tussis"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py" and not path.read_text().strip():
                continue
            if ast.get_docstring(ast.parse(path.read_text())) is None:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without a docstring: {missing}"
