"""The bare install is the light client: a wheel with the ``tussis`` package
only, which installs without TensorFlow, librosa, Celery or numpy and still
gives the client commands and ``from tussis import Client``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "librosa", "celery", "flask", "sqlalchemy", "numpy", "av", "keras")


def uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("uv is needed to build the client wheel: run the suite with `make test`")
        pytest.skip("uv not found (run the suite with `make test`)")
    return found


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("client")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run(
        [uv(), "build", "--wheel", "--out-dir", str(tmp / "dist"), str(ROOT)],
        check=True, capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("tussis-*.whl")
    venv = tmp / "venv"
    subprocess.run(
        [uv(), "venv", "--python", sys.executable, str(venv)],
        check=True, capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    subprocess.run(
        [uv(), "pip", "install", "--python", str(venv / "bin" / "python"), str(wheel)],
        check=True, capture_output=True, env=env, timeout=600,
    )  # fmt: skip
    return wheel, venv


def test_the_wheel_holds_the_client_package_only(client_venv: tuple[Path, Path]) -> None:
    wheel, _ = client_venv
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tussis"}


def test_the_bare_install_has_no_server_or_model_libraries(client_venv: tuple[Path, Path]) -> None:
    _, venv = client_venv
    listing = subprocess.run(
        [uv(), "pip", "list", "--python", str(venv / "bin" / "python"), "--format", "freeze"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    installed = {line.split("==", 1)[0].lower() for line in listing.split()}
    assert {"tussis", "click", "requests", "tqdm"} <= installed
    assert not installed & set(HEAVY), installed & set(HEAVY)
    site = next((venv / "lib").glob("python3*/site-packages"))
    size_mb = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6
    print(f"bare client install: {len(installed)} packages, {size_mb:.1f} MB")


def test_the_client_commands_and_library_work(
    client_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = client_venv
    tussis = venv / "bin" / "tussis"
    for args in (["--help"], ["submit", "--help"], ["status", "--help"], ["results", "--help"]):
        run = subprocess.run(
            [str(tussis), *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        assert run.returncode == 0, run.stderr
    code = (
        "import sys; from tussis import Batch, Client, Evaluation, Job, TussisError\n"
        "client = Client('http://127.0.0.1:9')\n"
        "import tussis.connection, tussis.describe, tussis.resources, tussis.submit\n"
        f"assert not any(m.split('.')[0] in {HEAVY!r} for m in sys.modules), 'heavy import'\n"
    )
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr


def test_a_model_command_on_the_bare_install_says_what_is_missing(
    client_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = client_venv
    run = subprocess.run(
        [str(venv / "bin" / "tussis"), "train", "--data", str(tmp_path), "--out", "x"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert "needs the Tussis server code" in run.stderr
    assert "Traceback" not in run.stderr


def test_keys_on_the_bare_install_says_it_belongs_to_the_server(
    client_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = client_venv
    run = subprocess.run(
        [str(venv / "bin" / "tussis"), "keys", "list"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert "needs the server install" in run.stderr and "docker compose run" in run.stderr
    assert "Traceback" not in run.stderr
