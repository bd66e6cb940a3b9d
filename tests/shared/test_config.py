"""Settings: one declaration each, read from the same environment variables as
before, secrets that never print, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import PROJECT_ROOT, Settings, SettingsError, load_settings, settings_table
from shared.queue import celery_config

DOCS = PROJECT_ROOT / "docs" / "configuration.md"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment: none of the machine's TUSSIS_* or service URLs."""
    import os

    for name in list(os.environ):
        if name.startswith("TUSSIS_") or name in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TUSSIS_DATA_DIR", str(tmp_path))
    return monkeypatch


def test_embedded_defaults_live_under_the_data_dir(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = load_settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'tussis.sqlite3'}"
    assert s.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    assert s.embedded_broker
    assert s.model_bundle == PROJECT_ROOT / "models" / "default"


def test_service_urls_switch_to_postgres_and_redis(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql://u:pw@db/tussis")
    env.setenv("REDIS_URL", "redis://cache:6379/0")
    s = load_settings()
    assert s.database_url == "postgresql+psycopg://u:pw@db/tussis"
    assert s.broker_url == "redis://cache:6379/0"
    env.setenv("TUSSIS_BROKER_URL", "redis://other:6379/1")
    assert load_settings().broker_url == "redis://other:6379/1"


def test_every_variable_is_read(env: pytest.MonkeyPatch) -> None:
    env.setenv("TUSSIS_PAGE_SIZE", "7")
    env.setenv("TUSSIS_MIN_DURATION_S", "0.5")
    env.setenv("TUSSIS_COUGH_GATE_BUNDLE", "off")
    env.setenv("TUSSIS_LOG_LEVEL", "debug")
    env.setenv("TUSSIS_QUEUE", "  spaced  ")
    s = load_settings()
    assert (s.page_size, s.min_duration_s, s.cough_gate_bundle) == (7, 0.5, None)
    assert (s.log_level, s.queue_name) == ("DEBUG", "spaced")


def test_empty_variables_mean_the_default(env: pytest.MonkeyPatch) -> None:
    env.setenv("TUSSIS_PAGE_SIZE", "")
    env.setenv("TUSSIS_QUEUE", "")
    s = load_settings()
    assert (s.page_size, s.queue_name) == (50, "tussis")


def test_secrets_never_print(env: pytest.MonkeyPatch) -> None:
    env.setenv("TUSSIS_API_KEYS", "alice:tok-alice, bob:tok-bob")
    env.setenv("TUSSIS_CALLBACK_SECRET", "hmac-secret")
    env.setenv("DATABASE_URL", "postgresql://u:db-password@db/tussis")
    s = load_settings()
    assert s.key_owners == {"tok-alice": "alice", "tok-bob": "bob"}
    assert s.callback_secret.get_secret_value() == "hmac-secret"
    shown = repr(s) + str(s) + str(s.public_dict())
    for secret in ("tok-alice", "tok-bob", "hmac-secret", "db-password"):
        assert secret not in str(s.public_dict()), secret
    for secret in ("tok-alice", "hmac-secret"):
        assert secret not in shown, secret
    assert "api_keys" not in s.public_dict() and "callback_secret" not in s.public_dict()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("TUSSIS_PAGE_SIZE", "many", "TUSSIS_PAGE_SIZE"),
        ("TUSSIS_PAGE_SIZE", "500", "TUSSIS_PAGE_SIZE"),
        ("TUSSIS_JOB_MAX_ATTEMPTS", "0", "TUSSIS_JOB_MAX_ATTEMPTS"),
        ("TUSSIS_API_KEYS", "no-colon", "TUSSIS_API_KEYS"),
    ],
)
def test_a_bad_value_names_its_variable(
    env: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(SettingsError, match=says):
        load_settings()


def test_settings_are_frozen_and_changed_copies_are_validated(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    with pytest.raises(ValueError):
        s.page_size = 3  # type: ignore[misc]
    assert s.changed(page_size=3).page_size == 3
    with pytest.raises(ValueError):
        s.changed(page_size=0)


def test_the_time_limit_check_belongs_to_the_queue_not_to_every_reader(
    env: pytest.MonkeyPatch,
) -> None:
    # `tussis train` reads the settings too; a worker-only rule must not stop it.
    env.setenv("TUSSIS_TASK_TIME_LIMIT", "99999")
    s = load_settings()
    with pytest.raises(SettingsError, match="TUSSIS_VISIBILITY_TIMEOUT"):
        celery_config(s)


def test_the_documented_table_is_generated_from_the_declarations() -> None:
    text = DOCS.read_text()
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    assert start in text and end in text
    documented = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert documented == settings_table().strip(), (
        "docs/configuration.md is out of date: regenerate it with `python -m shared.config`"
    )
    for field in Settings.model_fields.values():
        assert field.description, "every setting says what it means"
