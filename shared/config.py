"""All runtime settings, read from environment variables in one place.

Each setting is declared once below: its type, its default, the environment
variable it is read from and what it means. ``python -m shared.config`` prints
them as the table in docs/configuration.md (a test keeps the two in step).

Defaults are the *embedded* set-up: a SQLite file and a SQLite-backed Celery
broker under ``TUSSIS_DATA_DIR``, so ``make run`` needs no server. Setting
``DATABASE_URL`` and ``REDIS_URL`` switches to PostgreSQL and Redis without any
other change. Secrets (API keys, the callback secret) are secret types: they
print as ``**********`` and never appear in :meth:`Settings.public_dict`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    Field,
    Secret,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_YAMNET_URL = "https://tfhub.dev/google/lite-model/yamnet/tflite/1?lite-format=tflite"


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


def _env(
    name: str, description: str, default: Any = ..., *, shown_default: str = "", **kwargs: Any
) -> Any:
    """A field read from the environment variable ``name`` (or set by its field name).
    ``shown_default`` describes a default computed from other settings, for the docs."""
    extra: dict[str, Any] = {"env": name}
    if shown_default:
        extra["shown_default"] = shown_default
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return Field(
        validation_alias=AliasChoices(name),
        description=description,
        json_schema_extra=extra,
        **kwargs,
    )


def _default_yamnet_path() -> Path:
    """The team's copy beside the repo when present, else a per-user cache (downloaded once)."""
    beside = PROJECT_ROOT.parent / "shared" / "models" / "yamnet.tflite"
    if beside.is_file():
        return beside
    return Path.home() / ".cache" / "tussis" / "yamnet.tflite"


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs, as the usual 12-factor URL omits the driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _redact_url(value: str) -> str:
    if "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        env_ignore_empty=True,  # VAR= in a compose file means "use the default"
        populate_by_name=True,  # tests and tools pass field names
        extra="ignore",
        str_strip_whitespace=True,
    )

    data_dir: Path = _env(
        "TUSSIS_DATA_DIR",
        "Folder for the embedded database, broker and outputs.",
        PROJECT_ROOT / "var",
    )
    database_url: str = _env(
        "DATABASE_URL",
        "SQLAlchemy URL of the job store; `postgresql://` uses psycopg 3.",
        "",
        shown_default="SQLite in TUSSIS_DATA_DIR",
    )
    redis_url: str = _env(
        "REDIS_URL", "Redis for the Celery broker (when TUSSIS_BROKER_URL is not set).", ""
    )
    broker_url: str = _env(
        "TUSSIS_BROKER_URL",
        "Celery broker URL; overrides REDIS_URL.",
        "",
        shown_default="REDIS_URL, else SQLite in TUSSIS_DATA_DIR",
    )
    storage_url: str = _env(
        "TUSSIS_STORAGE_URL",
        "Where uploads are kept: `database` (a table) or `file:///path`.",
        "database",
    )
    model_bundle: Path = _env(
        "TUSSIS_MODEL_BUNDLE",
        "The diagnosis model bundle folder.",
        PROJECT_ROOT / "models" / "default",
    )
    cough_gate_bundle: Path | None = _env(
        "TUSSIS_COUGH_GATE_BUNDLE",
        "The cough gate bundle folder, or `off` to analyse without checking for a cough.",
        PROJECT_ROOT / "models" / "cough-gate",
    )
    queue_name: str = _env(
        "TUSSIS_QUEUE", "Celery queue of single jobs (batches use NAME.batch).", "tussis"
    )
    max_upload_bytes: int = _env(
        "TUSSIS_MAX_UPLOAD_BYTES", "Largest single upload.", 20 * 1024 * 1024, gt=0
    )
    min_duration_s: float = _env(
        "TUSSIS_MIN_DURATION_S", "Shortest recording accepted (seconds).", 0.3, ge=0
    )
    max_duration_s: float = _env(
        "TUSSIS_MAX_DURATION_S", "Longest recording accepted (seconds).", 120.0, gt=0
    )
    silence_dbfs: float = _env(
        "TUSSIS_SILENCE_DBFS",
        "A recording whose peak is below this level is refused as silent.",
        -60.0,
    )
    job_max_attempts: int = _env(
        "TUSSIS_JOB_MAX_ATTEMPTS",
        "Deliveries of a job whose worker died before it gives up.",
        3,
        ge=1,
    )
    task_time_limit_s: int = _env(
        "TUSSIS_TASK_TIME_LIMIT",
        "Hard time limit of one task (seconds); must stay below TUSSIS_VISIBILITY_TIMEOUT.",
        300,
        gt=0,
    )
    visibility_timeout_s: int = _env(
        "TUSSIS_VISIBILITY_TIMEOUT",
        "Redis re-delivers an unacknowledged task after this long.",
        3600,
        gt=0,
    )
    sweep_interval_s: float = _env(
        "TUSSIS_SWEEP_INTERVAL", "How often beat runs the sweeper (seconds).", 30.0, gt=0
    )
    requeue_after_s: float = _env(
        "TUSSIS_REQUEUE_AFTER", "A queued job untouched this long is re-published.", 600.0, gt=0
    )
    publish_timeout_s: float = _env(
        "TUSSIS_PUBLISH_TIMEOUT",
        "How long the API waits for the broker before answering 202.",
        5.0,
        gt=0,
    )
    retry_after_s: int = _env(
        "TUSSIS_RETRY_AFTER", "The Retry-After a client is told to poll at.", 2, ge=0
    )
    worker_concurrency: int = _env("TUSSIS_WORKER_CONCURRENCY", "Worker child processes.", 1, ge=1)
    worker_proc_alive_timeout_s: float = _env(
        "TUSSIS_WORKER_PROC_ALIVE_TIMEOUT",
        "How long a new worker child may take to load its models.",
        120.0,
    )
    page_size: int = _env(
        "TUSSIS_PAGE_SIZE", "Default page size of listings (1 to 200).", 50, ge=1, le=200
    )
    api_keys: Annotated[Secret[dict[str, str]], NoDecode] = _env(
        "TUSSIS_API_KEYS",
        "`name:token,name2:token2`; empty serves everyone as one anonymous owner.",
        Secret({}),
    )
    inception_weights: str = _env(
        "TUSSIS_INCEPTION_WEIGHTS", "`imagenet` (Keras download) or a local .h5 file.", "imagenet"
    )
    yamnet_model: Path = _env(
        "TUSSIS_YAMNET_MODEL",
        "The YAMNet .tflite file (downloaded there once if missing).",
        default_factory=_default_yamnet_path,
        shown_default="../shared/models/yamnet.tflite if present, "
        "else ~/.cache/tussis/yamnet.tflite",
    )
    yamnet_url: str = _env(
        "TUSSIS_YAMNET_URL", "Where a missing YAMNet file is downloaded from.", DEFAULT_YAMNET_URL
    )
    max_batch_upload_bytes: int = _env(
        "TUSSIS_MAX_BATCH_UPLOAD_BYTES", "Largest batch request body.", 2 * 1024**3, gt=0
    )
    archive_max_members: int = _env(
        "TUSSIS_ARCHIVE_MAX_MEMBERS", "Most files in one .zip.", 10000, gt=0
    )
    archive_max_uncompressed_bytes: int = _env(
        "TUSSIS_ARCHIVE_MAX_UNCOMPRESSED_BYTES",
        "Largest total uncompressed size of a .zip.",
        8 * 1024**3,
        gt=0,
    )
    archive_max_ratio: float = _env(
        "TUSSIS_ARCHIVE_MAX_RATIO",
        "Largest compression ratio of a .zip member (zip bombs).",
        100.0,
        gt=0,
    )
    batch_chunk_size: int = _env("TUSSIS_BATCH_CHUNK_SIZE", "Recordings per batch task.", 16, ge=1)
    callback_secret: SecretStr = _env(
        "TUSSIS_CALLBACK_SECRET",
        "HMAC key that signs batch callbacks (unsigned when empty).",
        SecretStr(""),
    )
    callback_max_attempts: int = _env(
        "TUSSIS_CALLBACK_MAX_ATTEMPTS",
        "Deliveries of a callback before it is marked failed.",
        12,
        ge=1,
    )
    log_level: str = _env("TUSSIS_LOG_LEVEL", "Python logging level.", "INFO")
    # Failure drills only: hold each analysis this long after claiming it, so an
    # operator (or a test) can kill a worker mid-job and watch the recovery.
    drill_task_delay_s: float = _env(
        "TUSSIS_DRILL_TASK_DELAY_S", "Failure drills only: hold each analysis this long.", 0.0, ge=0
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        """``"alice:s3cret,bob:other"`` -> ``{"s3cret": "alice", "other": "bob"}``."""
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            owner, sep, token = item.partition(":")
            if not sep or not owner or not token:
                raise ValueError("must look like 'name:token,name2:token2'")
            keys[token] = owner
        return keys

    @field_validator("cough_gate_bundle", mode="before")
    @classmethod
    def _gate_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("off", "none", ""):
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        # The defaults that depend on other settings. The model is frozen, so
        # they are filled in here, once, while it is being built.
        data_dir = self.data_dir.resolve()
        database_url = normalise_database_url(
            self.database_url or f"sqlite:///{data_dir / 'tussis.sqlite3'}"
        )
        broker_url = (
            self.broker_url or self.redis_url or f"sqla+sqlite:///{data_dir / 'broker.sqlite3'}"
        )
        for name, value in (
            ("data_dir", data_dir),
            ("database_url", database_url),
            ("broker_url", broker_url),
        ):
            object.__setattr__(self, name, value)
        return self

    # --- derived values -----------------------------------------------------------

    @property
    def key_owners(self) -> dict[str, str]:
        """API token -> owner name."""
        return self.api_keys.get_secret_value()

    @property
    def task_soft_time_limit_s(self) -> int:
        # The soft limit lets the task record `timeout` itself before the hard kill.
        return max(1, self.task_time_limit_s - max(5, self.task_time_limit_s // 10))

    @property
    def lease_s(self) -> int:
        """How long a claimed job is presumed alive without news from its worker."""
        return self.task_time_limit_s + 30

    @property
    def batch_queue_name(self) -> str:
        """Batch chunks wait here, so a single job never queues behind a whole batch."""
        return f"{self.queue_name}.batch"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")

    def changed(self, **changes: Any) -> Settings:
        """A copy with some settings changed, validated like the original."""
        return type(self).model_validate({**dict(self), **changes})

    def public_dict(self) -> dict[str, object]:
        """Settings safe to log (no credentials, no keys)."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Secret | SecretStr):
                continue
            out[name] = _redact_url(value) if isinstance(value, str) else str(value)
        return out


def load_settings() -> Settings:
    """The settings from the environment; :class:`SettingsError` names each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


def settings_table() -> str:
    """The Markdown table of every setting, for docs/configuration.md."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "shown_default" in extra:
            default = str(extra["shown_default"])
        elif field.default_factory is not None:
            default = ""
        else:
            default = field.default
            if isinstance(default, Secret | SecretStr):
                default = default.get_secret_value() or ""
            if isinstance(default, Path):
                default = (
                    str(default.relative_to(PROJECT_ROOT))
                    if default.is_relative_to(PROJECT_ROOT)
                    else str(default)
                )
            default = "" if default in ("", {}) else str(default)
        shown = (
            f"`{default}`"
            if default and "`" not in default and not extra.get("shown_default")
            else default
        )
        rows.append(f"| `{extra['env']}` | {shown or '(empty)'} | {field.description} |")
        del name
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_table())
