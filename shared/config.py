"""All runtime settings, read from environment variables in one place.

Every variable is documented in README.md ("Configuration"). Defaults are the
*embedded* set-up: a SQLite file and a SQLite-backed Celery broker under
``TUSSIS_DATA_DIR``, so ``make run`` needs no server. Setting ``DATABASE_URL``
and ``REDIS_URL`` switches to PostgreSQL and Redis without any other change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from exc


def _env_str(name: str, default: str) -> str:
    raw = os.environ.get(name)
    return default if raw is None or raw.strip() == "" else raw.strip()


def _parse_api_keys(raw: str) -> dict[str, str]:
    """``"alice:s3cret,bob:other"`` -> ``{"s3cret": "alice", "other": "bob"}``."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        owner, sep, token = item.partition(":")
        if not sep or not owner or not token:
            raise ValueError("TUSSIS_API_KEYS must look like 'name:token,name2:token2'")
        keys[token] = owner
    return keys


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    broker_url: str
    storage_url: str
    model_bundle: Path
    queue_name: str = "tussis"
    max_upload_bytes: int = 20 * 1024 * 1024
    min_duration_s: float = 0.3
    max_duration_s: float = 120.0
    silence_dbfs: float = -60.0
    job_max_attempts: int = 3
    task_time_limit_s: int = 300
    visibility_timeout_s: int = 3600
    sweep_interval_s: float = 30.0
    requeue_after_s: float = 600.0
    publish_timeout_s: float = 5.0
    retry_after_s: int = 2
    worker_concurrency: int = 1
    worker_proc_alive_timeout_s: float = 120.0
    page_size: int = 50
    api_keys: dict[str, str] = field(default_factory=dict)
    inception_weights: str = "imagenet"
    yamnet_model: Path = PROJECT_ROOT.parent / "shared" / "models" / "yamnet.tflite"
    yamnet_url: str = "https://tfhub.dev/google/lite-model/yamnet/tflite/1?lite-format=tflite"
    cough_gate_bundle: Path | None = PROJECT_ROOT / "models" / "cough-gate"
    max_batch_upload_bytes: int = 2 * 1024**3
    archive_max_members: int = 10000
    archive_max_uncompressed_bytes: int = 8 * 1024**3
    archive_max_ratio: float = 100.0
    batch_chunk_size: int = 16
    callback_secret: str = ""
    callback_max_attempts: int = 12
    log_level: str = "INFO"
    # Failure drills only: hold each analysis this long after claiming it, so an
    # operator (or a test) can kill a worker mid-job and watch the recovery.
    drill_task_delay_s: float = 0.0

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

    def validate(self) -> None:
        if self.task_time_limit_s >= self.visibility_timeout_s:
            # Otherwise Redis re-delivers a late-acked task that is still running.
            raise ValueError(
                "TUSSIS_TASK_TIME_LIMIT must be lower than TUSSIS_VISIBILITY_TIMEOUT "
                f"({self.task_time_limit_s} >= {self.visibility_timeout_s})"
            )
        if not 1 <= self.page_size <= 200:
            raise ValueError("TUSSIS_PAGE_SIZE must be between 1 and 200")
        if self.job_max_attempts < 1:
            raise ValueError("TUSSIS_JOB_MAX_ATTEMPTS must be at least 1")

    def public_dict(self) -> dict[str, object]:
        """Settings safe to log (no credentials, no keys)."""
        hidden = {"api_keys", "callback_secret"}
        out: dict[str, object] = {}
        for f in fields(self):
            if f.name in hidden:
                continue
            value = getattr(self, f.name)
            out[f.name] = _redact_url(value) if isinstance(value, str) else str(value)
        return out


def _redact_url(value: str) -> str:
    if "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return value


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs, as the usual 12-factor URL omits the driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _default_yamnet_path() -> Path:
    """The team's copy beside the repo when present, else a per-user cache (downloaded once)."""
    beside = PROJECT_ROOT.parent / "shared" / "models" / "yamnet.tflite"
    if beside.is_file():
        return beside
    return Path.home() / ".cache" / "tussis" / "yamnet.tflite"


def _cough_gate_path(value: str) -> Path | None:
    return None if value.lower() in ("off", "none", "") else Path(value)


def load_settings() -> Settings:
    data_dir = Path(_env_str("TUSSIS_DATA_DIR", str(PROJECT_ROOT / "var"))).resolve()
    database_url = normalise_database_url(
        _env_str("DATABASE_URL", f"sqlite:///{data_dir / 'tussis.sqlite3'}")
    )
    redis_url = os.environ.get("REDIS_URL", "").strip()
    broker_default = redis_url or f"sqla+sqlite:///{data_dir / 'broker.sqlite3'}"
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=_env_str("TUSSIS_BROKER_URL", broker_default),
        storage_url=_env_str("TUSSIS_STORAGE_URL", "database"),
        model_bundle=Path(
            _env_str("TUSSIS_MODEL_BUNDLE", str(PROJECT_ROOT / "models" / "default"))
        ),
        queue_name=_env_str("TUSSIS_QUEUE", "tussis"),
        max_upload_bytes=_env_int("TUSSIS_MAX_UPLOAD_BYTES", 20 * 1024 * 1024),
        min_duration_s=_env_float("TUSSIS_MIN_DURATION_S", 0.3),
        max_duration_s=_env_float("TUSSIS_MAX_DURATION_S", 120.0),
        silence_dbfs=_env_float("TUSSIS_SILENCE_DBFS", -60.0),
        job_max_attempts=_env_int("TUSSIS_JOB_MAX_ATTEMPTS", 3),
        task_time_limit_s=_env_int("TUSSIS_TASK_TIME_LIMIT", 300),
        visibility_timeout_s=_env_int("TUSSIS_VISIBILITY_TIMEOUT", 3600),
        sweep_interval_s=_env_float("TUSSIS_SWEEP_INTERVAL", 30.0),
        requeue_after_s=_env_float("TUSSIS_REQUEUE_AFTER", 600.0),
        publish_timeout_s=_env_float("TUSSIS_PUBLISH_TIMEOUT", 5.0),
        retry_after_s=_env_int("TUSSIS_RETRY_AFTER", 2),
        worker_concurrency=_env_int("TUSSIS_WORKER_CONCURRENCY", 1),
        worker_proc_alive_timeout_s=_env_float("TUSSIS_WORKER_PROC_ALIVE_TIMEOUT", 120.0),
        page_size=_env_int("TUSSIS_PAGE_SIZE", 50),
        api_keys=_parse_api_keys(os.environ.get("TUSSIS_API_KEYS", "")),
        inception_weights=_env_str("TUSSIS_INCEPTION_WEIGHTS", "imagenet"),
        yamnet_model=Path(_env_str("TUSSIS_YAMNET_MODEL", str(_default_yamnet_path()))),
        yamnet_url=_env_str("TUSSIS_YAMNET_URL", Settings.yamnet_url),
        cough_gate_bundle=_cough_gate_path(
            _env_str("TUSSIS_COUGH_GATE_BUNDLE", str(PROJECT_ROOT / "models" / "cough-gate"))
        ),
        max_batch_upload_bytes=_env_int("TUSSIS_MAX_BATCH_UPLOAD_BYTES", 2 * 1024**3),
        archive_max_members=_env_int("TUSSIS_ARCHIVE_MAX_MEMBERS", 10000),
        archive_max_uncompressed_bytes=_env_int(
            "TUSSIS_ARCHIVE_MAX_UNCOMPRESSED_BYTES", 8 * 1024**3
        ),
        archive_max_ratio=_env_float("TUSSIS_ARCHIVE_MAX_RATIO", 100.0),
        batch_chunk_size=_env_int("TUSSIS_BATCH_CHUNK_SIZE", 16),
        callback_secret=os.environ.get("TUSSIS_CALLBACK_SECRET", ""),
        callback_max_attempts=_env_int("TUSSIS_CALLBACK_MAX_ATTEMPTS", 12),
        log_level=_env_str("TUSSIS_LOG_LEVEL", "INFO").upper(),
        drill_task_delay_s=_env_float("TUSSIS_DRILL_TASK_DELAY_S", 0.0),
    )
    settings.validate()
    return settings
