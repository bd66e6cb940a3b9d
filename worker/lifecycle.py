"""Process start-up: the parent checks the bundle without TensorFlow; each
child disposes inherited database connections, then loads and warms the model
and the spectrogram renderer before taking its first job.

Plain functions: ``worker.celery_app`` connects them to Celery's signals. Also
here: recording ``timeout`` after a hard time limit (in the parent), and a guard
around a kombu bug that would end the worker when the broker restarts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import TimeLimitExceeded
from sqlalchemy import select

from ml.bundle import BundleError, fingerprint, read_manifest
from shared import batches, jobs, logs, model_registry
from shared.config import Settings
from shared.db import dispose_engines
from shared.queue import TASK_ANALYSE, TASK_ANALYSE_CHUNK, TASK_BATCH_CALLBACK, publish_callback
from shared.tables import Job
from worker import metrics, recording_work, runtime

log = logging.getLogger("tussis.worker")


def configure_logging(**_: Any) -> None:
    """The same configuration as gunicorn's and the API's (``TUSSIS_LOG_FORMAT``)."""
    settings = runtime.current().settings
    logs.configure(settings.log_format, settings.log_level)


def serve_metrics(**_: Any) -> None:
    """In the parent: one Prometheus endpoint for the worker and all its children."""
    metrics.serve(runtime.current().settings.worker_metrics_port)


def child_shutdown(**_: Any) -> None:
    metrics.child_exited()


# Log context of the task running in this child, by task id (prerun -> postrun).
_task_context: dict[str, list[Any]] = {}


def bind_task_context(
    task_id: str | None = None, task: Any = None, args: Any = None, **_: Any
) -> None:
    """Every line a task logs names its job (a single job) or batch (a callback); the
    pipeline names each job of a chunk itself."""
    name = getattr(task, "name", None)
    args = list(args or [])
    fields: dict[str, str | None] = {}
    if name == TASK_ANALYSE and args:
        fields["job_id"] = str(args[0])
    elif name == TASK_BATCH_CALLBACK and args:
        fields["batch_id"] = str(args[0])
    if task_id and fields:
        _task_context[task_id] = logs.bind(**fields)


def unbind_task_context(task_id: str | None = None, **_: Any) -> None:
    tokens = _task_context.pop(task_id or "", None)
    if tokens:
        logs.unbind(tokens)


def served_pins(settings: Settings) -> list[tuple[str, str]]:
    """(name, version) of each diagnosis bundle this worker serves, from the manifests
    alone (no TensorFlow: the parent reads them). SystemExit with a readable message for
    a folder that holds no bundle, or two bundles of one name and version."""
    pins: list[tuple[str, str]] = []
    for path in settings.diagnosis_bundles:
        try:
            manifest = read_manifest(path)
        except BundleError as exc:
            raise SystemExit(
                f"tussis worker: {exc}. Set TUSSIS_MODEL_BUNDLES (comma-separated) to model "
                "bundle folders."
            ) from exc
        pin = (manifest.name, manifest.version)
        if pin in pins:
            raise SystemExit(
                f"tussis worker: two bundles in TUSSIS_MODEL_BUNDLES are {pin[0]} {pin[1]}; "
                "give each bundle its own name or version."
            )
        pins.append(pin)
    return pins


def register_bundles(rt: runtime.Runtime) -> None:
    """Record this worker's bundles in served_models (its first diagnosis bundle as its
    default), and keep their fingerprints for the refreshes."""
    settings = rt.settings
    bundles = [(model_registry.DIAGNOSIS, path) for path in settings.diagnosis_bundles]
    if settings.cough_gate_bundle is not None:
        bundles.append((model_registry.COUGH_GATE, settings.cough_gate_bundle))
    keys = []
    for n, (role, path) in enumerate(bundles):
        key = fingerprint(path)
        with rt.session() as session:
            model_registry.register(
                session,
                role,
                key,
                read_manifest(path).to_dict(),
                is_default=role == model_registry.DIAGNOSIS and n == 0,
                queue=settings.queue_name,
            )
        keys.append(key)
    rt.served_fingerprints[:] = keys


def check_bundles(**_: Any) -> None:
    rt = runtime.current()
    settings = rt.settings
    # Fail fast in the parent with a readable message instead of crashing every child.
    pins = served_pins(settings)
    if settings.cough_gate_bundle is not None:
        try:
            read_manifest(settings.cough_gate_bundle)
        except BundleError as exc:
            raise SystemExit(
                f"tussis worker: {exc}. Set TUSSIS_COUGH_GATE_BUNDLE to the cough gate "
                "bundle, or to 'off' to analyse recordings without checking for a cough."
            ) from exc
    register_bundles(rt)
    log.info(
        "serving models %s (default first) from %s; broker %s; database %s",
        ", ".join(f"{name} {version}" for name, version in pins),
        ", ".join(str(p) for p in settings.diagnosis_bundles),
        settings.public_dict()["broker_url"],
        settings.public_dict()["database_url"],
    )


def init_child(**_: Any) -> None:
    # Connections opened by the parent must not be shared with the child.
    dispose_engines()
    logs.bind(worker_id=jobs.this_worker_id())  # for every line this child logs
    started = time.monotonic()
    runtime.current().start_model_refresh()
    try:
        models = runtime.current().load_models()
    except Exception:
        return  # logged by load_models; jobs fail with model_unavailable
    if any(m.manifest.backbone_name == "inception_v3" for m in models.all()):
        # Its model sees the spectrogram: load the renderer (librosa, scipy and numba's
        # compiled code, 2 to 12 s) before the first job. A YAMNet bundle listens to the
        # waveform: its child loads the renderer only when a picture is asked for, beside
        # its jobs (worker.runtime.Runtime.renderer_ready).
        runtime.current().warm_renderer()
    for model in [*models.all(), *filter(None, [models.cough_gate])]:
        model.warm_up()
    metrics.MODEL_LOAD_SECONDS.observe(time.monotonic() - started)
    log.info(
        "models %s ready in %.1f s (cough gate: %s)",
        ", ".join(f"{m.id} {m.version}" for m in models.all()),
        time.monotonic() - started,
        models.cough_gate.version if models.cough_gate else "off",
    )


def guard_kombu_restore_unacked() -> None:
    """Keep the worker alive when the broker restarts while it holds unacknowledged
    messages (a callback's retry waiting for its ETA, say).

    On a lost connection Celery closes the old connection; kombu's Redis transport then
    forgets its ``client`` (``Connection._do_close_transport``), but a channel that had
    not been closed yet is closed afterwards, and its ``QoS.restore_unacked`` opens a
    new Redis pool from ``transport.client.hostname``: ``AttributeError: 'NoneType'
    object has no attribute 'hostname'``, which Celery treats as an unrecoverable error
    and the worker exits (kombu issues #970 and #582,
    https://github.com/celery/kombu/issues/970). Nothing can be restored through a closed
    connection anyway: the messages stay in Redis's unacked set, which Redis re-delivers
    after the visibility timeout, or are gone with a broker that restarted empty, and
    the sweeper re-publishes their jobs from the job rows (``broker_epoch``).
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "tussis_guarded", False):
        return

    def restore_unacked(self: Any, client: Any = None) -> Any:
        transport = getattr(self.channel, "connection", None)
        if client is None and (transport is None or transport.client is None):
            log.warning(
                "broker connection already closed: %d unacknowledged message(s) left to the "
                "broker's redelivery and the sweeper",
                len(self._delivered),
            )
            self._delivered.clear()
            return None
        return original(self, client)

    restore_unacked.tussis_guarded = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]


def on_task_failure(sender: Any = None, exception: BaseException | None = None, **kw: Any) -> None:
    """In the Celery parent, after a child was killed at the hard time limit: record
    ``timeout`` on the jobs it held, and complete their batches."""
    name = getattr(sender, "name", None)
    if not isinstance(exception, TimeLimitExceeded) or name not in (
        TASK_ANALYSE,
        TASK_ANALYSE_CHUNK,
    ):
        return
    args = kw.get("args") or []
    job_ids = [args[0]] if name == TASK_ANALYSE else list(args[0])
    rt = runtime.current()
    limit = rt.settings.task_time_limit_s
    try:
        with rt.session() as session:
            n = jobs.fail_timed_out(
                session,
                job_ids,
                f"Analysis took longer than {limit} s and its worker process was stopped.",
            )
            found = session.execute(
                select(Job.batch_id, Job.recording_id).where(Job.id.in_(job_ids))
            ).all()
            batch_ids = {b for b, _ in found if b is not None}
            recording_ids = {r for _, r in found if r is not None}
        rt.notifier.jobs(job_ids)
        for recording_id in recording_ids:
            recording_work.complete(rt, recording_id)
        for batch_id in batch_ids:
            with rt.session() as session:
                batches.complete_and_notify(
                    session,
                    batch_id,
                    lambda b: publish_callback(sender.app, rt.settings, b),
                    rt.notifier.batch,
                )
        metrics.job_finished("failed", "timeout", count=n)
        log.warning("hard time limit: %d job(s) recorded as timeout", n)
    except Exception:
        # The lease runs out and the sweeper re-publishes them: attempts still bound it.
        log.exception("hard time limit: could not record the timeout of %s", job_ids)
