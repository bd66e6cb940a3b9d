"""Process start-up: the parent checks the bundle without TensorFlow; each
child disposes inherited database connections, then loads and warms the model
and the spectrogram renderer before taking its first job."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import setup_logging, worker_init, worker_process_init

from shared import served_models
from shared.bundle import BundleError, read_manifest
from shared.db import dispose_engines
from shared.spectrogram import warm_up
from worker.app import settings
from worker.tasks import runtime

log = logging.getLogger("tussis.worker")


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s",
    )


@worker_init.connect
def _check_bundles(**_: Any) -> None:
    # Fail fast in the parent with a readable message instead of crashing every child.
    try:
        manifest = read_manifest(settings.model_bundle)
    except BundleError as exc:
        raise SystemExit(
            f"tussis worker: {exc}. Set TUSSIS_MODEL_BUNDLE to a model bundle folder."
        ) from exc
    bundles = [(served_models.DIAGNOSIS, settings.model_bundle)]
    if settings.cough_gate_bundle is not None:
        try:
            read_manifest(settings.cough_gate_bundle)
        except BundleError as exc:
            raise SystemExit(
                f"tussis worker: {exc}. Set TUSSIS_COUGH_GATE_BUNDLE to the cough gate "
                "bundle, or to 'off' to analyse recordings without checking for a cough."
            ) from exc
        bundles.append((served_models.COUGH_GATE, settings.cough_gate_bundle))
    runtime.served_fingerprints = [
        served_models.register(settings.database_url, role, path) for role, path in bundles
    ]
    log.info(
        "serving model %s %s (%s) from %s; broker %s; database %s",
        manifest.name,
        manifest.version,
        manifest.backbone_name,
        settings.model_bundle,
        settings.public_dict()["broker_url"],
        settings.public_dict()["database_url"],
    )


@worker_process_init.connect
def _init_child(**_: Any) -> None:
    # Connections opened by the parent must not be shared with the child.
    dispose_engines()
    started = time.monotonic()
    try:
        models = runtime.load_models()
    except Exception:
        return  # logged by load_models; jobs fail with model_unavailable
    warm_up(models.diagnosis.manifest.spectrogram)
    for model in filter(None, (models.diagnosis, models.cough_gate)):
        model.warm_up()
    log.info(
        "model %s %s ready in %.1f s (cough gate: %s)",
        models.diagnosis.id,
        models.diagnosis.version,
        time.monotonic() - started,
        models.cough_gate.version if models.cough_gate else "off",
    )
