"""The API's OpenAPI 3.1 document (``/api/v1/openapi.json``) and a browsable page
(``/api/v1/docs``, Swagger UI).

Both are served without an API key: the document describes the routes and the
bodies, nothing of any tenant. The page's scripts and stylesheet come from the
``flask-openapi3-swagger`` package, served from this origin, so the page works
without internet and its policy allows nothing from elsewhere.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from flask import Response, current_app, jsonify, send_file
from flask_openapi3 import APIBlueprint, OpenAPI

from api import contract

PREFIX = "/api/v1"
DOCUMENT_PATH = f"{PREFIX}/openapi.json"
PAGE_PATH = f"{PREFIX}/docs"
_SWAGGER = Path(str(files("flask_openapi3_swagger") / "templates" / "swagger"))
_PAGE = files("api") / "docs_page"
ASSETS = {
    "swagger-ui.css": (_SWAGGER / "css" / "swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": (_SWAGGER / "js" / "swagger-ui-bundle.js", "text/javascript"),
    "init.js": (Path(str(_PAGE / "init.js")), "text/javascript"),
}
# Paths that need no API key (api/auth.py) and get the page's policy (api/__init__.py).
PUBLIC_PATHS = frozenset({DOCUMENT_PATH, PAGE_PATH, *(f"{PAGE_PATH}/{name}" for name in ASSETS)})

# Only this origin's scripts and styles (Swagger UI's icons are data: images), and
# the document fetched from here; no inline script, no framing.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

bp = APIBlueprint("docs", __name__, abp_tags=[contract.TAGS["docs"]])


@bp.after_request
def _page_policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


@bp.get(
    DOCUMENT_PATH,
    responses=contract.answers(
        {
            200: {
                "description": "This document.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
        keyed=False,
    ),
    openapi_extensions=contract.PUBLIC,
)
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of this API"""
    app = current_app
    assert isinstance(app, OpenAPI)
    return jsonify(contract.document(app))


@bp.get(
    PAGE_PATH,
    responses=contract.answers(
        {200: contract.file_answer("text/html", "The browsable page.")}, keyed=False
    ),
    openapi_extensions=contract.PUBLIC,
)
def docs_page() -> Response:
    """This document as a browsable page (Swagger UI)"""
    response = Response((_PAGE / "index.html").read_text(), mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


def _asset(name: str) -> Response:
    path, mimetype = ASSETS[name]
    return send_file(path, mimetype=mimetype, max_age=3600)


# One route per file, none with an argument: nothing else can be asked for.
for _name, (_path, _type) in ASSETS.items():
    bp.get(
        f"{PAGE_PATH}/{_name}",
        responses=contract.answers({200: contract.file_answer(_type, _name)}, keyed=False),
        openapi_extensions=contract.PUBLIC,
        summary=f"A file of the page: {_name}",
        operation_id=f"docs_asset_{_name.replace('-', '_').replace('.', '_')}",
        endpoint=f"asset_{_name.replace('.', '_')}",
    )(lambda name=_name: _asset(name))
