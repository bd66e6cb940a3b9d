"""What one worker process holds: settings, storage and (in children) the models.

``worker.celery_app`` creates the process's runtime with :func:`configure`;
tasks and signal handlers reach it with :func:`current`. Models load lazily, so
the Celery parent (which never analyses) never imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from shared import notify
from shared.config import Settings
from shared.db import session_scope
from shared.jobs import this_worker_id
from shared.storage import AudioStorage, make_storage
from worker.heartbeat import Heartbeat

if TYPE_CHECKING:
    from ml.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    diagnosis: Model
    cough_gate: Model | None


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        endpoint = settings.s3_endpoint_url or None
        self.storage: AudioStorage = make_storage(
            settings.storage_url, settings.database_url, endpoint
        )
        # Long recordings, their PCM and resumable uploads (TUSSIS_RECORDING_STORAGE_URL).
        self.recording_storage: AudioStorage = make_storage(
            settings.recording_storage_url, settings.database_url, endpoint
        )
        self.served_fingerprints: list[str] = []
        # Wakes the API's long polls once a job or batch is finished (after the commit).
        self.notifier = notify.Publisher(settings)
        self._models: Models | None = None
        self._error: Exception | None = None
        self._lock = threading.RLock()  # renderer_ready loads the models under it
        self._renderer: threading.Thread | None = None  # loading the picture renderer
        self._renderer_loaded = False
        self.heartbeat = Heartbeat(
            self.session, this_worker_id, settings.lease_s, settings.heartbeat_interval_s
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction on the job store, committed on success."""
        with session_scope(self.settings.database_url) as session:
            yield session

    def tf_threads(self) -> int:
        cores = os.cpu_count() or 1
        return max(1, cores // max(1, self.settings.worker_concurrency))

    def _load(self) -> Models:
        from ml.model import load_model

        s = self.settings

        def load(path: Path) -> Model:
            return load_model(
                path,
                inception_weights=s.inception_weights,
                yamnet_model=s.yamnet_model,
                yamnet_url=s.yamnet_url,
                threads=self.tf_threads(),
            )

        diagnosis = load(s.model_bundle)
        gate = load(s.cough_gate_bundle) if s.cough_gate_bundle else None
        return Models(diagnosis, gate)

    def warm_renderer(self) -> None:
        """Load the spectrogram renderer now, in this thread (before an Inception V3
        bundle's first job: its model sees the spectrogram)."""
        from ml.spectrogram import warm_up

        warm_up(self.load_models().diagnosis.manifest.spectrogram)
        self._renderer_loaded = True

    def renderer_ready(self) -> bool:
        """Whether the spectrogram renderer is loaded; the first call starts loading it in
        a thread of its own (librosa, scipy and numba's compiled code: 2 s on a quiet
        machine, 12 s on a busy one, and about 200 MiB). Until it is, a picture task asks
        again a second later instead of holding the child: the analysis pool never waits
        behind a picture, and a child nobody asks for pictures never pays for it."""
        from ml.spectrogram import warm_up

        with self._lock:
            if not self._renderer_loaded and self._renderer is None:
                params = self.load_models().diagnosis.manifest.spectrogram
                self._renderer = threading.Thread(
                    target=warm_up, args=(params,), name="renderer-warm-up", daemon=True
                )
                self._renderer.start()
            if self._renderer is not None and not self._renderer.is_alive():
                self._renderer_loaded = True
            return self._renderer_loaded

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


_current: Runtime | None = None


def configure(settings: Settings) -> Runtime:
    """Create this process's runtime (called once, by ``worker.celery_app``)."""
    global _current
    _current = Runtime(settings)
    return _current


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("worker.runtime.configure() has not been called in this process")
    return _current
