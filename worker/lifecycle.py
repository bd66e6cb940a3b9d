"""Process start-up: the parent checks the bundle without TensorFlow; each
child disposes inherited database connections, then loads and warms the model
and the spectrogram renderer before taking its first job.

Plain functions: ``worker.celery_app`` connects them to Celery's signals.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ml.bundle import BundleError, fingerprint, read_manifest
from ml.spectrogram import warm_up
from shared import model_registry
from shared.db import dispose_engines
from worker import runtime

log = logging.getLogger("tussis.worker")


def configure_logging(**_: Any) -> None:
    logging.basicConfig(
        level=runtime.current().settings.log_level,
        format="%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s",
    )


def check_bundles(**_: Any) -> None:
    rt = runtime.current()
    settings = rt.settings
    # Fail fast in the parent with a readable message instead of crashing every child.
    try:
        manifest = read_manifest(settings.model_bundle)
    except BundleError as exc:
        raise SystemExit(
            f"tussis worker: {exc}. Set TUSSIS_MODEL_BUNDLE to a model bundle folder."
        ) from exc
    bundles = [(model_registry.DIAGNOSIS, settings.model_bundle)]
    if settings.cough_gate_bundle is not None:
        try:
            read_manifest(settings.cough_gate_bundle)
        except BundleError as exc:
            raise SystemExit(
                f"tussis worker: {exc}. Set TUSSIS_COUGH_GATE_BUNDLE to the cough gate "
                "bundle, or to 'off' to analyse recordings without checking for a cough."
            ) from exc
        bundles.append((model_registry.COUGH_GATE, settings.cough_gate_bundle))
    for role, path in bundles:
        key = fingerprint(path)
        with rt.session() as session:
            model_registry.register(session, role, key, read_manifest(path).to_dict())
        rt.served_fingerprints.append(key)
    log.info(
        "serving model %s %s (%s) from %s; broker %s; database %s",
        manifest.name,
        manifest.version,
        manifest.backbone_name,
        settings.model_bundle,
        settings.public_dict()["broker_url"],
        settings.public_dict()["database_url"],
    )


def init_child(**_: Any) -> None:
    # Connections opened by the parent must not be shared with the child.
    dispose_engines()
    started = time.monotonic()
    try:
        models = runtime.current().load_models()
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
