"""The web page: ``GET /`` and its assets under ``/assets/``.

Plain hand-written HTML, JS and CSS from ``api/static/``: no framework, no build
step, and nothing fetched from another origin (clinics may have no internet).
The page only talks to this API, with the same JSON a ``curl`` user sees.
"""

from __future__ import annotations

from flask import Blueprint, Response

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/assets")

# Everything comes from this origin. Recordings and spectrograms fetched with an
# API key are shown through blob: URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "media-src 'self' blob:",
        "img-src 'self' blob: data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    # The browser asks for the microphone only on this page, and only when the user records.
    response.headers["Permissions-Policy"] = "microphone=(self), camera=(), geolocation=()"
    return response


@bp.get("/")
def index() -> Response:
    response = bp.send_static_file("index.html")
    # Always revalidate the page, so a new release's asset references are picked up.
    response.headers["Cache-Control"] = "no-cache"
    return response
