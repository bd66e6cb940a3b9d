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

import ipaddress
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

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
    name: str, description: str, default: Any = ..., *, shown_default: str, **kwargs: Any
) -> Any:
    """A field read from the environment variable ``name`` (or set by its field name).
    ``description`` and ``shown_default`` are what docs/configuration.md shows."""
    extra: dict[str, Any] = {"env": name, "shown_default": shown_default}
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
        "Directory for the embedded defaults: the SQLite job database, the SQLite broker and (in "
        "`make run`) the beat schedule file. The `tussis` command keeps its feature cache "
        "(`feature-cache/`) and evaluation outputs (`evaluations/`) here.",
        PROJECT_ROOT / "var",
        shown_default="`<repo>/var`",
    )
    database_url: str = _env(
        "DATABASE_URL",
        "The SQL database for jobs (and, by default, uploads). Any SQLAlchemy URL works. "
        "`postgresql://` and `postgres://` are rewritten to `postgresql+psycopg://` (psycopg 3). "
        "The migrations read it too.",
        "",
        shown_default="`sqlite:///<TUSSIS_DATA_DIR>/tussis.sqlite3`",
    )
    redis_url: str = _env(
        "REDIS_URL",
        "When set, the Celery broker is Redis at this URL. When unset, the broker is "
        "`sqla+sqlite:///<TUSSIS_DATA_DIR>/broker.sqlite3`.",
        "",
        shown_default="unset",
    )
    broker_url: str = _env(
        "TUSSIS_BROKER_URL",
        "Explicit Celery broker URL. It overrides `REDIS_URL`.",
        "",
        shown_default="`REDIS_URL`, or the SQLite broker above",
    )
    storage_url: str = _env(
        "TUSSIS_STORAGE_URL",
        "Where clip uploads (jobs, batches) and the worker's spectrogram images are kept. "
        "`database` uses the `audio_blobs` table. `file:///path` uses a directory, which must be "
        "shared by every API and worker host. `s3://bucket/prefix` uses an S3-compatible store, "
        "as for long recordings.",
        "database",
        shown_default="`database`",
    )
    recording_storage_url: str = _env(
        "TUSSIS_RECORDING_STORAGE_URL",
        "Where long recordings (`/api/v1/recordings`), their 16 kHz PCM and unfinished resumable "
        "uploads are kept: `file:///path` (a directory every API and worker host shares) or "
        "`s3://bucket/prefix` (an S3-compatible store through boto3; see "
        "[Long recordings](long-recordings.md#storage)). Never `database`: recordings are "
        "streamed, never held whole.",
        "",
        shown_default="`file://<TUSSIS_DATA_DIR>/recordings`",
    )
    s3_endpoint_url: str = _env(
        "TUSSIS_S3_ENDPOINT_URL",
        "The S3 endpoint for `s3://` storage URLs when it is not AWS (MinIO: "
        "`http://minio:9000`). Credentials and region come from boto3's usual variables "
        "(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`) or an instance role.",
        "",
        shown_default="unset (AWS)",
    )
    max_recording_bytes: int = _env(
        "TUSSIS_MAX_RECORDING_BYTES",
        "Largest accepted long recording (`/api/v1/recordings` and resumable uploads), checked "
        "while it streams: a larger one answers `413 upload_too_large` and leaves nothing stored.",
        2 * 1024**3,
        gt=0,
        shown_default="`2147483648` (2 GiB)",
    )
    max_recording_s: float = _env(
        "TUSSIS_MAX_RECORDING_S",
        "Longest accepted long recording, in seconds, checked while it streams (from the "
        "container's packets) and again when the worker decodes it (`422 audio_too_long`).",
        26 * 3600.0,
        gt=0,
        shown_default="`93600` (26 h)",
    )
    segment_s: float = _env(
        "TUSSIS_SEGMENT_S",
        "Length of the segments a long recording is cut into, rounded down to whole YAMNet "
        "windows (0.48 s hops); each is one task any worker child takes. See "
        "[Long recordings](long-recordings.md#segments-and-merging).",
        60.0,
        ge=1,
        shown_default="`60` (125 windows)",
    )
    upload_retention: timedelta | None = _env(
        "TUSSIS_UPLOAD_RETENTION",
        "How long an unfinished resumable upload (`/api/v1/uploads`, tus) is kept after its last"
        " byte arrived; the retention task deletes it and its bytes after that.",
        timedelta(days=1),
        shown_default="`1d`",
    )
    model_bundles: Annotated[tuple[Path, ...], NoDecode] = _env(
        "TUSSIS_MODEL_BUNDLES",
        "The diagnosis model bundle folders a worker serves, comma-separated. Every worker "
        "child loads all of them once; the worker consumes the queue of each (see "
        "[Architecture](architecture.md#a-queue-per-model)). Unset: `TUSSIS_MODEL_BUNDLE` "
        "alone where that is set, else `<repo>/models/default` and `<repo>/models/inception` "
        "(where it exists).",
        (),
        shown_default="unset",
    )
    model_bundle: Path = _env(
        "TUSSIS_MODEL_BUNDLE",
        "A one-bundle deployment: the diagnosis bundle a worker serves when "
        "`TUSSIS_MODEL_BUNDLES` is unset.",
        PROJECT_ROOT / "models" / "default",
        shown_default="`<repo>/models/default`",
    )
    default_model: str = _env(
        "TUSSIS_DEFAULT_MODEL",
        "The model a job or batch submitted without `model` is scored with: `name` (its newest "
        "active version) or `name@version`. Unset: the first bundle of a worker "
        "(`TUSSIS_MODEL_BUNDLES`), the one served longest where workers differ. Read by the "
        "API, which resolves it against the served models (`GET /api/v1/models`).",
        "",
        shown_default="unset",
    )
    model_grace_s: float = _env(
        "TUSSIS_MODEL_GRACE",
        "Seconds a served model stays active after its last worker was last seen (worker "
        "children refresh it every third of this). After that it is no longer accepted "
        "(`422 model_not_served`), and the sweeper fails the jobs still queued for it with "
        "`model_not_served` instead of letting them wait for a worker that is gone.",
        120.0,
        ge=3,
        shown_default="`120`",
    )
    cough_gate_bundle: Path | None = _env(
        "TUSSIS_COUGH_GATE_BUNDLE",
        "The cough gate bundle. `off` or `none` disables the gate: every recording is analysed, "
        "and `cough_detected` and `cough_score` are `null`.",
        PROJECT_ROOT / "models" / "cough-gate",
        shown_default="`<repo>/models/cough-gate`",
    )
    queue_name: str = _env(
        "TUSSIS_QUEUE",
        "The Celery queue for single jobs (and the sweeper). Batch chunks and callbacks use "
        "`<TUSSIS_QUEUE>.batch`. A worker started without `-Q` consumes both.",
        "tussis",
        shown_default="`tussis`",
    )
    max_upload_bytes: int = _env(
        "TUSSIS_MAX_UPLOAD_BYTES",
        "Largest accepted recording: a single job's upload, or one file or zip member of a batch.",
        20 * 1024 * 1024,
        gt=0,
        shown_default="`20971520` (20 MiB)",
    )
    min_duration_s: float = _env(
        "TUSSIS_MIN_DURATION_S",
        "Shortest accepted recording, in seconds.",
        0.3,
        ge=0,
        shown_default="`0.3`",
    )
    max_duration_s: float = _env(
        "TUSSIS_MAX_DURATION_S",
        "Longest accepted recording, in seconds. Decoding stops just past this limit.",
        120.0,
        gt=0,
        shown_default="`120`",
    )
    silence_dbfs: float = _env(
        "TUSSIS_SILENCE_DBFS",
        "Recordings whose peak is below this level (in dBFS) are rejected as `silent_audio`.",
        -60.0,
        shown_default="`-60`",
    )
    job_max_attempts: int = _env(
        "TUSSIS_JOB_MAX_ATTEMPTS",
        "Claims allowed per job. When they are used up without a result, the job fails with "
        "`worker_lost`. Must be at least 1.",
        3,
        ge=1,
        shown_default="`3`",
    )
    task_time_limit_s: int = _env(
        "TUSSIS_TASK_TIME_LIMIT",
        "Celery's hard time limit per task (a single job, or a whole batch chunk), in seconds. The"
        " soft limit, which records `timeout`, is this minus max(5 s, 10 %), so 270 s by default. "
        "Must be lower than `TUSSIS_VISIBILITY_TIMEOUT`.",
        300,
        gt=0,
        shown_default="`300`",
    )
    visibility_timeout_s: int = _env(
        "TUSSIS_VISIBILITY_TIMEOUT",
        "Redis only: after this many seconds, Redis re-delivers an unacknowledged message.",
        3600,
        gt=0,
        shown_default="`3600`",
    )
    job_lease_s: float = _env(
        "TUSSIS_JOB_LEASE",
        "Seconds a claimed job stays leased to its worker without news from it. The worker child "
        "renews the lease of the jobs it holds every fifth of this, however long they run, so a "
        "job whose worker or host died is re-published about this long (plus one "
        "`TUSSIS_SWEEP_INTERVAL`) after its last renewal.",
        30.0,
        ge=5,
        shown_default="`30`",
    )
    sweep_interval_s: float = _env(
        "TUSSIS_SWEEP_INTERVAL",
        "Seconds between sweeper runs, as scheduled by beat.",
        10.0,
        gt=0,
        shown_default="`10`",
    )
    requeue_after_s: float = _env(
        "TUSSIS_REQUEUE_AFTER",
        "The sweeper re-publishes a `queued` job that has not been published for this many seconds"
        " (for a batch item: since it was accepted). A batch's callback is re-queued once it is "
        "overdue by the smaller of this and 60 s: never attempted that long after its batch "
        "finished, or a retry that long past its planned time.",
        600.0,
        gt=0,
        shown_default="`600`",
    )
    publish_timeout_s: float = _env(
        "TUSSIS_PUBLISH_TIMEOUT",
        "Seconds to connect to the broker. A dead broker fails a publish or a `/readyz` check "
        "within about this time, instead of hanging.",
        5.0,
        gt=0,
        shown_default="`5`",
    )
    retry_after_s: int = _env(
        "TUSSIS_RETRY_AFTER",
        "The longest `Retry-After` (in seconds) on `202` responses and on polls of unfinished "
        "jobs and batches. Below it, the value is estimated from the queue (see "
        "[Retry-After](api.md#retry-after)); it is never below 1.",
        30,
        ge=1,
        shown_default="`30`",
    )
    worker_concurrency: int = _env(
        "TUSSIS_WORKER_CONCURRENCY",
        "Worker child processes per `celery worker`. Each child holds its own model. TensorFlow "
        "threads per child = CPU count / concurrency.",
        1,
        ge=1,
        shown_default="`1`",
    )
    worker_proc_alive_timeout_s: float = _env(
        "TUSSIS_WORKER_PROC_ALIVE_TIMEOUT",
        "Seconds that a new worker child may take to start (load and warm the model) before Celery"
        " kills it.",
        120.0,
        shown_default="`120`",
    )
    worker_max_tasks_per_child: int = _env(
        "TUSSIS_WORKER_MAX_TASKS_PER_CHILD",
        "Tasks (single jobs or batch chunks) a worker child runs before Celery replaces it with a "
        "fresh one, which loads the models again. `0` keeps children for the worker's lifetime.",
        0,
        ge=0,
        shown_default="`0` (no limit)",
    )
    page_size: int = _env(
        "TUSSIS_PAGE_SIZE",
        "Default `limit` for the lists of jobs, batches and batch items. Keep it within 1 to 200.",
        50,
        ge=1,
        le=200,
        shown_default="`50`",
    )
    api_keys: Annotated[Secret[dict[str, str]], NoDecode] = _env(
        "TUSSIS_API_KEYS",
        "Bootstrap only: `owner:token,owner2:token2`, accepted beside the keys in the database "
        "(`tussis keys create`), for a first deployment or a test. Prefer database keys: these are "
        "plaintext in the process environment.",
        Secret({}),
        shown_default="unset",
    )
    bind: str = _env(
        "TUSSIS_BIND",
        "The addresses the API listens on, comma-separated. `gunicorn.conf.py` sets it from "
        "gunicorn's `--bind` (default `127.0.0.1:5000`), so set it yourself only under another "
        "server. With no API keys the API is open, and only when every address is loopback; "
        "otherwise it refuses to start.",
        "127.0.0.1:5000",
        shown_default="`127.0.0.1:5000`",
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = _env(
        "TUSSIS_ALLOWED_HOSTS",
        "Comma-separated host names the API answers to besides loopback names (`localhost`, "
        "`127.0.0.1`, `[::1]`): `tussis.example.org`, or `.example.org` for it and its "
        "subdomains. Any other `Host` gets `400 host_not_allowed` (a guard against DNS "
        "rebinding; `/healthz`, `/readyz` and `/metrics` answer any). Unset, a deployment with "
        "keys answers any name, and an open one (no keys) loopback names only.",
        (),
        shown_default="empty",
    )
    api_threads: int = _env(
        "TUSSIS_API_THREADS",
        "Threads per gunicorn worker process (`gthread` workers, `gunicorn.conf.py`). A long poll "
        "(`Prefer: wait`) holds one while it waits, but no database connection; each process "
        "keeps 8 of them for other requests, so one process holds up to this minus 8 waiting "
        "clients (docs/performance.md).",
        300,
        ge=2,
        le=2000,
        shown_default="`300`",
    )
    rate_limit: str = _env(
        "TUSSIS_RATE_LIMIT",
        "Requests per API key (per client address in open mode) to `/api/v1`, in "
        "[Flask-Limiter notation](https://flask-limiter.readthedocs.io/en/stable/configuration.html"
        "#rate-limit-string-notation); `;` separates several. Over it: `429 rate_limited` with "
        "`Retry-After`.",
        "20/second;600/minute",
        shown_default="`20/second;600/minute`",
    )
    upload_bytes_per_minute: int = _env(
        "TUSSIS_UPLOAD_BYTES_PER_MINUTE",
        "Uploaded bytes per API key per minute (job and batch uploads): a body's declared "
        "`Content-Length` is charged before it is read, a chunked body's bytes as they arrive. "
        "Keep it at least `TUSSIS_MAX_BATCH_UPLOAD_BYTES`, or the largest batch can never pass.",
        4 * 1024**3,
        gt=0,
        shown_default="`4294967296` (4 GiB)",
    )
    rate_limit_storage_url: str = _env(
        "TUSSIS_RATE_LIMIT_STORAGE",
        "Where rate-limit counters live, shared by every API process: a `redis://` URL or "
        "`memory://` (per process).",
        "",
        shown_default="`REDIS_URL` when set, else `memory://`",
    )
    callback_allowed_networks: Annotated[
        tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], NoDecode
    ] = _env(
        "TUSSIS_CALLBACK_ALLOWED_NETWORKS",
        "Comma-separated networks (`10.1.2.0/24`, `127.0.0.1/32`) that batch callbacks may reach "
        "although they are loopback, link-local or private. Every other such address is refused, "
        "at submission and again at delivery, and so is an address of the host itself unless a "
        "network here names it alone (`10.1.2.5/32`).",
        (),
        shown_default="empty",
    )
    audio_retention: timedelta | None = _env(
        "TUSSIS_AUDIO_RETENTION",
        "How long uploaded audio and spectrogram images are kept after the job was accepted: `7d`,"
        " `12h`, `30m`, `90s`, or `forever`. A periodic task deletes older audio; results stay.",
        timedelta(days=7),
        shown_default="`7d`",
    )
    result_retention: timedelta | None = _env(
        "TUSSIS_RESULT_RETENTION",
        "How long job results (and batches) are kept after they were accepted, in the same "
        "notation. `forever` keeps them.",
        None,
        shown_default="`forever`",
    )
    retention_interval_s: float = _env(
        "TUSSIS_RETENTION_INTERVAL",
        "Seconds between runs of the retention task, as scheduled by beat.",
        3600.0,
        gt=0,
        shown_default="`3600`",
    )
    inception_weights: str = _env(
        "TUSSIS_INCEPTION_WEIGHTS",
        "Where the Inception V3 ImageNet weights come from, for bundles that use them (and for "
        "`tussis train --backbone inception_v3`). `imagenet` lets Keras download them (cached "
        "under `~/.keras`). A path means a local "
        "`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`, or a network cut at "
        "`mixed8` (`*.weights.h5`): that file then replaces the path a bundle that references "
        "its backbone names (`models/inception` names `../shared`'s), and must have the "
        "sha256 the bundle names.",
        "imagenet",
        shown_default="`imagenet`",
    )
    yamnet_model: Path = _env(
        "TUSSIS_YAMNET_MODEL",
        "The YAMNet TFLite file, for bundles with the `yamnet` backbone (both shipped bundles) and"
        " for `tussis`. If it is missing, it is downloaded once from `TUSSIS_YAMNET_URL` and kept "
        "only if its SHA-256 matches the digest pinned in `ml/yamnet.py`.",
        default_factory=_default_yamnet_path,
        shown_default="`<repo>/../shared/models/yamnet.tflite` if that file exists, "
        "else `~/.cache/tussis/yamnet.tflite`",
    )
    yamnet_url: str = _env(
        "TUSSIS_YAMNET_URL",
        "Where the worker downloads a missing YAMNet file from. A file with another SHA-256 is "
        "refused.",
        DEFAULT_YAMNET_URL,
        shown_default="`https://tfhub.dev/google/lite-model/yamnet/tflite/1?lite-format=tflite`",
    )
    max_batch_upload_bytes: int = _env(
        "TUSSIS_MAX_BATCH_UPLOAD_BYTES",
        "Largest batch request body (`POST /api/v1/batches` and `.../items`). A larger one answers"
        " `413 upload_too_large`.",
        2 * 1024**3,
        gt=0,
        shown_default="`2147483648` (2 GiB)",
    )
    archive_max_members: int = _env(
        "TUSSIS_ARCHIVE_MAX_MEMBERS",
        "Most files in one `.zip` (folders, `__MACOSX/`, `.DS_Store` and `Thumbs.db` not counted),"
        " else `422 archive_too_many_members`; its member list (central directory) may list 3 "
        "times as many entries in 512 bytes per entry, checked before it is read. A batch request"
        " may also have at most this many + 16 multipart parts.",
        10000,
        gt=0,
        shown_default="`10000`",
    )
    archive_max_uncompressed_bytes: int = _env(
        "TUSSIS_ARCHIVE_MAX_UNCOMPRESSED_BYTES",
        "Most data one `.zip` may expand to, by its headers and as actually read, else `422 "
        "archive_too_large`.",
        8 * 1024**3,
        gt=0,
        shown_default="`8589934592` (8 GiB)",
    )
    archive_max_ratio: float = _env(
        "TUSSIS_ARCHIVE_MAX_RATIO",
        "A zip member of 1 MiB or more that is compressed more than this ratio is rejected as "
        "`compression_ratio_too_high`; so is a whole `.zip` of 1 MiB or more uncompressed (`422`)"
        ".",
        100.0,
        gt=0,
        shown_default="`100`",
    )
    archive_max_expansion_bytes: int = _env(
        "TUSSIS_ARCHIVE_MAX_EXPANSION_BYTES",
        "Most bytes one `.zip` may expand to beyond twice its own size (its members uncompressed, "
        "minus the archive, minus this allowance and the archive's size again), by its headers "
        "and as read, else `422 compression_ratio_too_high`. It bounds the work a small upload can"
        " cause: every expanded byte is decoded, at about 40 ms per MiB, so the allowance costs "
        "about a second beyond work in proportion to the upload.",
        32 * 1024**2,
        gt=0,
        shown_default="`33554432` (32 MiB)",
    )
    batch_chunk_size: int = _env(
        "TUSSIS_BATCH_CHUNK_SIZE",
        "Batch items per message on the batch queue. The worker runs the models on a chunk's clips"
        " in one call. Values below 1 count as 1.",
        16,
        shown_default="`16`",
    )
    coalesce_jobs: int = _env(
        "TUSSIS_COALESCE_JOBS",
        "When a worker child takes a single job's message, it also claims up to this many other "
        "queued single jobs (oldest first) and runs them together through the batch pipeline, "
        "one model call for all. With one job queued it runs alone, at once. `0` runs each "
        "single job on its own.",
        15,
        ge=0,
        le=500,
        shown_default="`15`",
    )
    callback_secret: SecretStr = _env(
        "TUSSIS_CALLBACK_SECRET",
        "The key that signs batch callbacks: the Standard Webhooks `webhook-signature` and the "
        "older `X-Tussis-Signature` (hex HMAC-SHA256 of the body). A `whsec_...` secret is used "
        "as is; any other is used as `whsec_` + base64 of its bytes, which is what receivers "
        "configure in a Standard Webhooks verifier. Set it whenever you use callbacks: with the "
        "empty default, callbacks are sent unsigned. It is never logged.",
        SecretStr(""),
        shown_default="empty",
    )
    callback_max_attempts: int = _env(
        "TUSSIS_CALLBACK_MAX_ATTEMPTS",
        "Delivery attempts per batch callback, with exponential backoff, before its state becomes "
        "`failed`.",
        12,
        ge=1,
        shown_default="`12`",
    )
    log_level: str = _env(
        "TUSSIS_LOG_LEVEL",
        "Log level. The scripts also pass it to `celery --loglevel`.",
        "INFO",
        shown_default="`INFO`",
    )
    log_format: Literal["text", "json"] = _env(
        "TUSSIS_LOG_FORMAT",
        "`text`: one line per record with a timestamp, the level, the process and the logger. "
        "`json`: one JSON object per line (`timestamp`, `level`, `logger`, `message`, and "
        "`job_id`, `batch_id`, `owner`, `worker_id` where they apply), for a log collector. "
        "The same for gunicorn, the API and the worker (`shared/logs.py`).",
        "text",
        shown_default="`text`",
    )
    metrics_token: SecretStr = _env(
        "TUSSIS_METRICS_TOKEN",
        "When set, the API's `GET /metrics` answers only requests with "
        "`Authorization: Bearer <this token>` (`401` otherwise). Unset, `/metrics` is open: "
        "keep it off the public network (see [Metrics](operations.md#metrics)).",
        SecretStr(""),
        shown_default="unset",
    )
    worker_metrics_port: int = _env(
        "TUSSIS_WORKER_METRICS_PORT",
        "The port on which each `celery worker` serves its Prometheus metrics (all its child "
        "processes together) on every interface. `0` serves none.",
        0,
        ge=0,
        le=65535,
        shown_default="`0` (off)",
    )
    worker_task_events: bool = _env(
        "TUSSIS_WORKER_TASK_EVENTS",
        "Workers send Celery task events, which Flower's task view shows (Redis broker only: the "
        "embedded SQLite broker carries no events).",
        True,
        shown_default="`true`",
    )
    # Failure drills only: hold each analysis this long after claiming it, so an
    # operator (or a test) can kill a worker mid-job and watch the recovery.
    drill_task_delay_s: float = _env(
        "TUSSIS_DRILL_TASK_DELAY_S",
        "Failure drills only: the worker sleeps this many seconds after claiming each job. See "
        "[Failure drills](operations.md#failure-drills).",
        0.0,
        ge=0,
        shown_default="`0`",
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

    @field_validator("callback_allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in value.split(",")
            if part.strip()
        )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        return tuple(str(part).strip().lower() for part in value if str(part).strip())

    @field_validator("audio_retention", "result_retention", "upload_retention", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        """``7d``, ``12h``, ``30m``, ``90s`` or plain seconds; ``forever`` is no limit."""
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if text in ("forever", "never", "off", "none"):
            return None
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dhms]?)", text)
        if not match:
            raise ValueError("must look like '7d', '12h', '30m', '90s' or 'forever'")
        unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds", "": "seconds"}
        return timedelta(**{unit[match.group(2)]: float(match.group(1))})

    @field_validator("model_bundles", mode="before")
    @classmethod
    def _parse_bundles(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        return tuple(Path(str(part).strip()) for part in value if str(part).strip())

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
        limiter_url = self.rate_limit_storage_url or self.redis_url or "memory://"
        recordings_url = self.recording_storage_url or f"file://{data_dir / 'recordings'}"
        if not recordings_url.startswith(("file://", "s3://")):
            raise ValueError(
                "TUSSIS_RECORDING_STORAGE_URL must be 'file:///path' or 's3://bucket/prefix': "
                "long recordings are streamed, never kept whole in a database row"
            )
        for name, value in (
            ("recording_storage_url", recordings_url),
            ("data_dir", data_dir),
            ("database_url", database_url),
            ("broker_url", broker_url),
            ("rate_limit_storage_url", limiter_url),
        ):
            object.__setattr__(self, name, value)
        return self

    # --- derived values -----------------------------------------------------------

    @property
    def key_owners(self) -> dict[str, str]:
        """Bootstrap API token -> owner name."""
        return self.api_keys.get_secret_value()

    @property
    def bind_addresses(self) -> list[str]:
        return [part.strip() for part in self.bind.split(",") if part.strip()]

    @property
    def task_soft_time_limit_s(self) -> int:
        # The soft limit lets the task record `timeout` itself before the hard kill.
        return max(1, self.task_time_limit_s - max(5, self.task_time_limit_s // 10))

    @property
    def lease_s(self) -> float:
        """How long a claimed job is presumed alive without news from its worker (the
        worker child's heartbeat renews it, so a long job never outlives its lease)."""
        return self.job_lease_s

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker child renews its jobs' leases: several renewals fit in one
        lease, so a slow database round trip or a busy child does not lose a live job."""
        return self.job_lease_s / 5

    @property
    def segment_windows(self) -> int:
        """YAMNet windows per segment of a long recording (``TUSSIS_SEGMENT_S`` / 0.48 s)."""
        return max(1, int(self.segment_s / 0.48))

    @property
    def prepare_time_limit_s(self) -> int:
        """The hard limit of a recording's one decoding pass (hours of compressed audio take
        minutes), kept below the broker's visibility timeout like every task's."""
        return max(self.task_time_limit_s, self.visibility_timeout_s - 300)

    @property
    def diagnosis_bundles(self) -> tuple[Path, ...]:
        """The diagnosis bundles a worker serves, its default first (``TUSSIS_MODEL_BUNDLES``;
        else ``TUSSIS_MODEL_BUNDLE`` alone where it is not the default folder; else the
        default folder and ``models/inception`` where that exists)."""
        if self.model_bundles:
            return self.model_bundles
        default = PROJECT_ROOT / "models" / "default"
        if self.model_bundle != default:
            return (self.model_bundle,)
        inception = PROJECT_ROOT / "models" / "inception"
        return (default, inception) if (inception / "manifest.json").is_file() else (default,)

    @property
    def model_touch_interval_s(self) -> float:
        """How often a worker child says it still serves its bundles."""
        return self.model_grace_s / 3

    @property
    def recording_queue_name(self) -> str:
        """Long recordings' segments wait here, so they never hold up single jobs."""
        return f"{self.queue_name}.recordings"

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
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for field in Settings.model_fields.values():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        rows.append(f"| `{extra['env']}` | {extra['shown_default']} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_table())
