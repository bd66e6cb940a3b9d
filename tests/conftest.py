"""Fixtures: real PostgreSQL, Redis and SQLite; real recordings from ../shared.

Outside CI a test whose service is missing is skipped with the reason; under
``CI=true`` it fails, so a green CI run means the real thing was exercised.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from shared.config import PROJECT_ROOT, Settings, normalise_database_url

# The long-recording fixtures (a night with coughs on segment edges, its expected events).
pytest_plugins = ["tests.long_fixtures"]

IN_CI = os.environ.get("CI", "").lower() == "true"
SHARED_DIR = Path(os.environ.get("TUSSIS_SHARED_DIR", PROJECT_ROOT.parent / "shared")).resolve()
COUGH_DIR = SHARED_DIR / "data" / "covid19-cough"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DAMAGED_FILE = "098d66e5-bda6-4e99-b787-ab890046c44b.mp3"
YAMNET_MODEL = SHARED_DIR / "models" / "yamnet.tflite"


def require(ok: bool, reason: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


# --- data -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def cough_metadata() -> list[dict]:
    require((COUGH_DIR / "metadata.json").is_file(), f"no cough data at {COUGH_DIR}")
    return json.loads((COUGH_DIR / "metadata.json").read_text())


@pytest.fixture(scope="session")
def cough_files(cough_metadata: list[dict]) -> list[Path]:
    """Decodable real recordings, in a fixed order."""
    return [
        COUGH_DIR / "raw" / m["filename"]
        for m in cough_metadata
        if m["filename"] != DAMAGED_FILE and (COUGH_DIR / "raw" / m["filename"]).is_file()
    ]


@pytest.fixture(scope="session")
def cough_file(cough_files: list[Path]) -> Path:
    return cough_files[4]


@pytest.fixture(scope="session")
def damaged_file(cough_metadata: list[dict]) -> Path:
    return COUGH_DIR / "raw" / DAMAGED_FILE


# --- services ---------------------------------------------------------------------


def migrate(database_url: str) -> None:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = normalise_database_url(os.environ.get("DATABASE_URL", DEFAULT_PG))
    if not url.startswith("postgresql"):
        url = normalise_database_url(DEFAULT_PG)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        reachable, why = True, ""
    except Exception as exc:  # pragma: no cover - depends on the machine
        reachable, why = False, str(exc).splitlines()[0]
    finally:
        engine.dispose()
    require(reachable, f"PostgreSQL not reachable at {url}: {why}")
    return url


def _create_database(admin_url: str) -> str:
    name = f"tussis_test_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(admin_url: str, url: str) -> None:
    name = sa.make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    url = _create_database(postgres_admin_url)
    migrate(url)
    yield url
    _drop_database(postgres_admin_url, url)


@pytest.fixture
def fresh_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """An empty, unmigrated database for one test."""
    url = _create_database(postgres_admin_url)
    yield url
    _drop_database(postgres_admin_url, url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        reachable, why = True, ""
    except Exception as exc:  # pragma: no cover - depends on the machine
        reachable, why = False, str(exc)
    require(reachable, f"Redis not reachable at {url}: {why}")
    return url


class IsolatedSettings(Settings):
    """Settings from arguments only: a test's settings never pick up the machine's
    environment (CI sets DATABASE_URL and REDIS_URL for the whole run)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        **_: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def configure(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some changed (validated, like the original)."""
    return settings.changed(**changes)


def base_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for tests: embedded defaults under ``tmp`` unless overridden."""
    settings = IsolatedSettings(
        data_dir=tmp,
        database_url=f"sqlite:///{tmp / 'tussis.sqlite3'}",
        broker_url=f"sqla+sqlite:///{tmp / 'broker.sqlite3'}",
        storage_url="database",
        model_bundle=tmp / "no-bundle",
        queue_name=f"tussis-test-{uuid.uuid4().hex[:8]}",
        yamnet_model=YAMNET_MODEL,
        cough_gate_bundle=PROJECT_ROOT / "models" / "cough-gate",
        # Tests poll hard from one address; tests/api/test_access.py sets real limits.
        rate_limit="100/second",
    )
    return configure(settings, **overrides)


@pytest.fixture(params=["embedded", "services"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The same tests on SQLite + SQLite broker and on PostgreSQL + Redis."""
    if request.param == "embedded":
        s = base_settings(tmp_path)
        migrate(s.database_url)
        return s
    pg = request.getfixturevalue("postgres_url")
    broker = request.getfixturevalue("redis_url")
    return base_settings(tmp_path, database_url=normalise_database_url(pg), broker_url=broker)


# --- models -------------------------------------------------------------------------


def make_label_folders(root: Path, metadata: list[dict], files: list[Path], per_label: int) -> Path:
    """``root/sick`` and ``root/not sick`` with links to real recordings, as retrain.py took."""
    by_name = {m["filename"]: m for m in metadata}
    for label, folder in ((True, "sick"), (False, "not sick")):
        (root / folder).mkdir(parents=True)
        chosen = [f for f in files if by_name[f.name]["covid19"] is label][:per_label]
        for f in chosen:
            (root / folder / f.name).symlink_to(f)
    return root


def train_tiny(out: Path, data: Path, backbone: str, name: str) -> Path:
    from ml.training import TrainOptions, train_bundle

    options = TrainOptions(
        backbone=backbone,
        test_fraction=0.25,
        inception_weights="none",  # ImageNet weights cannot be downloaded here
        yamnet_model=YAMNET_MODEL,
        cache_dir=out.parent / "cache",
        progress=False,
    )
    train_bundle(data, out, name=name, version="0.0.1", options=options)
    return out


@pytest.fixture(scope="session")
def tiny_data(
    tmp_path_factory: pytest.TempPathFactory, cough_metadata: list[dict], cough_files: list[Path]
) -> Path:
    return make_label_folders(tmp_path_factory.mktemp("tiny-data"), cough_metadata, cough_files, 12)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """Inception V3 (random weights, stored in the bundle) trained by `tussis train`'s code
    on 24 real recordings."""
    return train_tiny(
        tmp_path_factory.mktemp("bundles") / "tiny", tiny_data, "inception_v3", "tiny-test"
    )


@pytest.fixture(scope="session")
def tiny_yamnet_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    return train_tiny(
        tmp_path_factory.mktemp("bundles") / "tiny-yamnet", tiny_data, "yamnet", "tiny-yamnet"
    )


# --- an S3 endpoint ----------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 HTTP endpoint on loopback: moto's standalone server, one per session."""
    from tests.stack import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the S3 endpoint, as ``s3://bucket/prefix``; boto3 in this process
    (and in the processes a test starts) gets the endpoint's dummy credentials."""
    import boto3

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"tussis-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/recordings"


# moto accepts any credentials; boto3 needs some, and a region.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
