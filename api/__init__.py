"""Flask API: ``gunicorn 'api:create_app()'``.

It validates uploads, stores them, writes the job row and publishes a Celery
message. It never imports TensorFlow or librosa.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider

from api import auth, limits
from api.batches import bp as batches_bp
from api.errors import register_error_handlers
from api.health import bp as health_bp
from api.jobs import bp as jobs_bp
from api.served_models import bp as models_bp
from api.web import bp as web_bp
from shared.config import Settings, load_settings
from shared.queue import make_celery
from shared.storage import make_storage

log = logging.getLogger(__name__)

# Multipart framing around the file itself (boundaries, headers, other fields).
MULTIPART_OVERHEAD = 64 * 1024


class JsonProvider(DefaultJSONProvider):
    ensure_ascii = False  # "Diagnóstico", not "Diagn\u00f3stico"
    sort_keys = False  # keep the documented field order


def celery_init_app(app: Flask, settings: Settings) -> None:
    """As in Flask's Celery example: the app carries its Celery instance in extensions."""
    app.extensions["celery"] = make_celery(settings, name="tussis-api")


def _api_security_headers(response: Response) -> Response:
    """API answers are health data: never cached by a shared cache, never rendered as
    a page, never framed. (The page sets its own policy in api/web.py.) No CORS
    header is ever sent, so browsers on other origins cannot read the API."""
    if request.path.startswith("/api/") or request.path in ("/healthz", "/readyz"):
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
    return response


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    log.info("tussis api: %s", auth.check_can_start(settings))
    app = Flask(__name__, static_folder=None)  # api/web.py serves the page and its assets
    app.config.update(MAX_CONTENT_LENGTH=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app.json = JsonProvider(app)
    app.extensions["tussis.settings"] = settings
    app.extensions["tussis.storage"] = make_storage(settings.storage_url, settings.database_url)
    celery_init_app(app, settings)
    register_error_handlers(app)
    # Authentication runs before the limiter, so that limits count per key.
    auth.init_app(app)
    limits.init_app(app, settings, [jobs_bp, batches_bp, models_bp])
    app.after_request(_api_security_headers)
    app.register_blueprint(health_bp)
    app.register_blueprint(jobs_bp, url_prefix="/api/v1")
    app.register_blueprint(models_bp, url_prefix="/api/v1")
    app.register_blueprint(web_bp)
    app.register_blueprint(batches_bp, url_prefix="/api/v1")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level)
    return app
