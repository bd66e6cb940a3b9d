"""What one worker process holds: settings, storage and (in children) the model."""

from __future__ import annotations

import logging
import os
import threading

from shared.config import Settings
from shared.storage import AudioStorage, make_storage

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage: AudioStorage = make_storage(settings.storage_url, settings.database_url)
        self._model = None
        self._model_error: Exception | None = None
        self._lock = threading.Lock()

    def tf_threads(self) -> int:
        cores = os.cpu_count() or 1
        return max(1, cores // max(1, self.settings.worker_concurrency))

    def load_model(self):  # -> worker.model.Model
        """Load once per process; later calls return the same model (or the same error)."""
        with self._lock:
            if self._model is None and self._model_error is None:
                from worker.model import load_model

                try:
                    self._model = load_model(
                        self.settings.model_bundle,
                        inception_weights=self.settings.inception_weights,
                        threads=self.tf_threads(),
                    )
                except Exception as exc:
                    log.error("cannot load model bundle %s: %s", self.settings.model_bundle, exc)
                    self._model_error = exc
            if self._model_error is not None:
                raise self._model_error
            return self._model
