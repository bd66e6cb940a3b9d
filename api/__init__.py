"""Flask API: ``gunicorn 'api:create_app()'``.

It validates uploads, stores them, writes the job row and publishes a Celery
message. It never imports TensorFlow or librosa.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from flask_openapi3 import Info, OpenAPI

from api import auth, contract, guards, intake, limits, metrics, waiting
from api.batches import bp as batches_bp
from api.docs import bp as docs_bp
from api.errors import register_error_handlers
from api.evaluation import bp as evaluation_bp
from api.health import bp as health_bp
from api.jobs import bp as jobs_bp
from api.parameter_errors import raise_parameter_error
from api.recordings import bp as recordings_bp
from api.schemas import Error
from api.served_models import bp as models_bp
from api.uploads import bp as uploads_bp
from api.web import bp as web_bp
from shared import logs, notify
from shared.config import Settings, load_settings
from shared.queue import make_celery
from shared.storage import make_storage

log = logging.getLogger(__name__)

API_DESCRIPTION = (
    "Cough-recording analysis: submit recordings as jobs or batches, poll them, read "
    "the results. A research tool, not a diagnostic device. Every error answers "
    '`{"error": {"code", "message", "status"}}`; the codes are listed in docs/api.md.'
)

# Multipart framing around the file itself (boundaries, headers, other fields).
MULTIPART_OVERHEAD = 64 * 1024


class JsonProvider(DefaultJSONProvider):
    ensure_ascii = False  # "Diagnóstico", not "Diagn\u00f3stico"
    sort_keys = False  # keep the documented field order

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        # JSON has no NaN: one non-finite score made a whole listing unreadable. It is
        # written as null, and allow_nan=False makes any other way in an error.
        kwargs.setdefault("allow_nan", False)
        return super().dumps(guards.finite(obj), **kwargs)


def _release() -> str:
    try:
        return version("tussis")
    except PackageNotFoundError:  # a checkout run without installing the package
        return "0"


def celery_init_app(app: Flask, settings: Settings) -> None:
    """As in Flask's Celery example: the app carries its Celery instance in extensions."""
    app.extensions["celery"] = make_celery(settings, name="tussis-api")


def _api_security_headers(response: Response) -> Response:
    """API answers are health data: never cached by a shared cache, never rendered as
    a page, never framed. (The page sets its own policy in api/web.py.) No CORS
    header is ever sent, so browsers on other origins cannot read the API. ``no-store``
    is set here, over whatever a view said: no answer, a picture included, may outlive
    a DELETE in a cache. The docs page and its scripts (no tenant data) keep theirs."""
    if request.path.startswith("/api/") or request.path in ("/healthz", "/readyz"):
        if request.blueprint == docs_bp.name:
            response.headers.setdefault("Cache-Control", "no-store")
        else:
            response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.blueprint != docs_bp.name:  # the docs page sets its own, in api/docs.py
            response.headers["Content-Security-Policy"] = (
                "default-src 'none'; frame-ancestors 'none'"
            )
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
    return response


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    log.info("tussis api: %s", auth.check_can_start(settings))
    # A Flask app whose routes declare their parameters and answers (api/contract.py):
    # it validates query and path parameters and generates /api/v1/openapi.json.
    app = OpenAPI(
        __name__,
        static_folder=None,  # api/web.py serves the page and its assets
        info=Info(title="Tussis API", version=_release(), description=API_DESCRIPTION),
        security_schemes=contract.SECURITY_SCHEMES,
        openapi_extensions={"security": contract.SECURITY},
        validation_error_status=400,
        validation_error_model=Error,
        validation_error_callback=raise_parameter_error,
        doc_ui=False,  # api/docs.py serves the document and the page
    )
    app.config.update(MAX_CONTENT_LENGTH=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app.json = JsonProvider(app)
    app.extensions["tussis.settings"] = settings
    endpoint = settings.s3_endpoint_url or None
    app.extensions["tussis.storage"] = make_storage(
        settings.storage_url, settings.database_url, endpoint
    )
    # Long recordings and resumable uploads: streamed, in their own store.
    app.extensions["tussis.recording_storage"] = make_storage(
        settings.recording_storage_url, settings.database_url, endpoint
    )
    # Long polls wait here (api/waiting.py); the batches the API itself completes (an
    # empty one closed) are announced as the worker announces the rest.
    app.extensions["tussis.waiters"] = waiting.Hub(settings, settings.api_threads)
    app.extensions["tussis.notifier"] = notify.Publisher(settings)
    app.extensions["tussis.active_models"] = intake.ActiveModels()
    celery_init_app(app, settings)
    register_error_handlers(app)
    metrics.init_app(app)  # first, so that it times and counts every request
    guards.init_app(app)  # hostile URLs, headers and ids stop here, before anything else
    # Authentication runs before the limiter, so that limits count per key.
    auth.init_app(app)
    metrics.init_caller_context(app)
    limits.init_app(
        app, settings, [jobs_bp, batches_bp, evaluation_bp, models_bp, recordings_bp, uploads_bp]
    )
    app.after_request(_api_security_headers)
    app.register_api(health_bp)
    app.register_api(jobs_bp, url_prefix="/api/v1")
    app.register_api(models_bp, url_prefix="/api/v1")
    app.register_blueprint(web_bp)
    app.register_api(batches_bp, url_prefix="/api/v1")
    app.register_api(evaluation_bp, url_prefix="/api/v1")
    app.register_api(recordings_bp, url_prefix="/api/v1")
    app.register_api(uploads_bp, url_prefix="/api/v1")
    app.register_api(docs_bp)
    contract.register_components(app)
    if not logging.getLogger().handlers:
        # Under gunicorn, gunicorn.conf.py has configured logging already (the same way).
        logs.configure(settings.log_format, settings.log_level)
    return app
