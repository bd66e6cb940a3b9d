"""What one worker process holds: settings, storage and (in children) the models."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.config import Settings
from shared.storage import AudioStorage, make_storage

if TYPE_CHECKING:
    from worker.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    diagnosis: Model
    cough_gate: Model | None


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage: AudioStorage = make_storage(settings.storage_url, settings.database_url)
        self.served_fingerprints: list[str] = []
        self._models: Models | None = None
        self._error: Exception | None = None
        self._lock = threading.Lock()

    def tf_threads(self) -> int:
        cores = os.cpu_count() or 1
        return max(1, cores // max(1, self.settings.worker_concurrency))

    def _load(self) -> Models:
        from worker.model import load_model

        s = self.settings
        kwargs = {
            "inception_weights": s.inception_weights,
            "yamnet_model": s.yamnet_model,
            "yamnet_url": s.yamnet_url,
            "threads": self.tf_threads(),
        }
        diagnosis = load_model(s.model_bundle, **kwargs)
        gate = load_model(s.cough_gate_bundle, **kwargs) if s.cough_gate_bundle else None
        return Models(diagnosis, gate)

    def load_models(self) -> Models:
        """Load once per process; later calls return the same models (or the same error)."""
        with self._lock:
            if self._models is None and self._error is None:
                try:
                    self._models = self._load()
                except Exception as exc:
                    log.error("cannot load the model bundles: %s", exc)
                    self._error = exc
            if self._error is not None:
                raise self._error
            assert self._models is not None
            return self._models
