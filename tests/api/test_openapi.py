"""The OpenAPI document (/api/v1/openapi.json) and its page (/api/v1/docs): a valid
OpenAPI 3.1 document covering every route, every error answer in the one Error
shape, and a page that loads nothing from another origin."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from api import create_app
from tests.api.test_web import CHROMIUM, CHROMIUM_ARGS, LOOPBACK, playwright
from tests.conftest import base_settings, migrate
from tests.stack import Stack

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
__all__ = ["playwright"]  # the browser fixture of tests/api/test_web.py
PUBLIC = {"/healthz", "/readyz", "/api/v1/openapi.json", "/api/v1/docs"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    settings = base_settings(tmp, api_keys={"docs-key": "docs"})
    migrate(settings.database_url)
    return create_app(settings)


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    # No key: the document describes routes, nothing of any tenant.
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_every_api_route_is_in_the_document(app: Flask, document: dict[str, Any]) -> None:
    missing = []
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule in ("/healthz", "/readyz")):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            if method.lower() not in document["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def test_every_error_answer_uses_the_one_error_schema(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        assert op.get("summary"), (method, path)
        for status, answer in op["responses"].items():
            if int(status) < 400:
                continue
            schema = answer["content"]["application/json"]["schema"]
            expected = "NotReady" if (path, status) == ("/readyz", "503") else "Error"
            assert schema == {"$ref": f"#/components/schemas/{expected}"}, (method, path, status)
    error = document["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"code", "message", "status"}


def test_keyed_operations_declare_the_bearer_scheme_and_their_errors(
    document: dict[str, Any],
) -> None:
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"bearer": []} in document["security"]
    for path, method, op in operations(document):
        if path in PUBLIC or path.startswith("/api/v1/docs/"):
            assert op["security"] == [], (method, path)
            continue
        assert "security" not in op  # the document's: a key
        assert {"400", "401", "429"} <= set(op["responses"]), (method, path)
        if "{" in path:
            assert "404" in op["responses"], (method, path)


def test_listings_declare_limit_cursor_and_the_link_header(document: dict[str, Any]) -> None:
    for path in ("/api/v1/jobs", "/api/v1/batches", "/api/v1/batches/{batch_id}/items"):
        op = document["paths"][path]["get"]
        assert {p["name"] for p in op["parameters"] if p["in"] == "query"} == {"limit", "cursor"}
        assert "Link" in op["responses"]["200"]["headers"]


def test_uploads_are_declared_as_multipart_file_fields(document: dict[str, Any]) -> None:
    jobs = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    assert jobs["multipart/form-data"]["schema"]["properties"]["audio"]["format"] == "binary"
    batches = document["paths"]["/api/v1/batches"]["post"]["requestBody"]["content"]
    assert set(batches["multipart/form-data"]["schema"]["properties"]) >= {"files", "archive"}


def test_the_docs_page_loads_only_from_this_origin(app: Flask) -> None:
    client: FlaskClient = app.test_client()  # no key
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not re.search(r"(https?:)?//", html), "the page names another origin"
    assert "<script>" not in html  # no inline script: the policy forbids them
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "http" not in policy and "unsafe" not in policy
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3
    for asset in assets:
        response = client.get(f"/api/v1/{asset}")
        assert response.status_code == 200, asset
        assert response.headers["Content-Security-Policy"] == policy
        response.close()


def test_the_api_itself_still_needs_a_key_and_keeps_its_deny_all_policy(app: Flask) -> None:
    client = app.test_client()
    response = client.get("/api/v1/jobs")
    assert response.status_code == 401
    policy = response.headers["Content-Security-Policy"]
    assert policy == "default-src 'none'; frame-ancestors 'none'"


@pytest.mark.integration
def test_the_docs_page_renders_in_a_browser_under_its_policy(
    tmp_path: Path, playwright: Any
) -> None:
    """Swagger UI really starts under the page's policy: every operation is listed,
    no policy violation or script error, and no request leaves this server."""
    settings = base_settings(tmp_path, api_keys={"docs-key": "docs"})
    migrate(settings.database_url)
    stack = Stack(settings, tmp_path)
    try:
        stack.start_api()
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page()
            requests: list[str] = []
            problems: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
            page.on(
                "console",
                lambda m: (
                    problems.append(m.text)
                    if "Content Security Policy" in m.text or "Refused to" in m.text
                    else None
                ),
            )
            page.goto(f"{stack.url}/api/v1/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            shown = page.locator(".opblock").count()
        finally:
            chromium.close()
    finally:
        stack.stop()
    assert not problems, problems
    assert shown >= 16
    for url in requests:
        parts = urlsplit(url)
        assert parts.scheme == "data" or parts.hostname in LOOPBACK, url
