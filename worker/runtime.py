"""What one worker process holds: settings, storage and (in children) the models.

``worker.celery_app`` creates the process's runtime with :func:`configure`;
tasks and signal handlers reach it with :func:`current`. Models load lazily, so
the Celery parent (which never analyses) never imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from shared import model_registry, notify
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
    """Every bundle this worker serves, loaded once per child: ``diagnosis`` is its
    default (the first of ``TUSSIS_MODEL_BUNDLES``), ``by_pin`` all of them by (name,
    version), the pin a job carries."""

    diagnosis: Model
    cough_gate: Model | None
    by_pin: dict[tuple[str, str], Model] = field(default_factory=dict)

    def for_pin(self, model_id: str | None, version: str | None) -> Model | None:
        """The model a job pinned to (``model_id``, ``version``) runs on; the default for
        a job pinned to none; None when this worker does not serve the pinned one."""
        if not model_id or not version:
            return self.diagnosis
        return self.by_pin.get((model_id, version))

    def all(self) -> list[Model]:
        return list(self.by_pin.values()) or [self.diagnosis]


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

        loaded = [load(path) for path in s.diagnosis_bundles]
        gate = load(s.cough_gate_bundle) if s.cough_gate_bundle else None
        return Models(loaded[0], gate, {(m.id, m.version): m for m in loaded})

    def start_model_refresh(self) -> None:
        """In a child: say every ``TUSSIS_MODEL_GRACE / 3`` that this worker still serves
        its bundles (``served_models.last_seen_at``), from a thread of its own, so a busy
        child or a worker whose sweeps another worker runs stays listed; a worker gone
        for ``TUSSIS_MODEL_GRACE`` stops being, and the sweeper fails work left for it."""
        if not self.served_fingerprints:
            return

        def run() -> None:
            while True:
                time.sleep(self.settings.model_touch_interval_s)
                try:
                    with self.session() as session:
                        model_registry.touch(session, self.served_fingerprints)
                except Exception as exc:  # the database may be restarting: try again later
                    log.warning("could not refresh the served models (%s)", type(exc).__name__)

        threading.Thread(target=run, name="served-models", daemon=True).start()

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
