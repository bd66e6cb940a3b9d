"""What the OpenAPI document says beyond the bodies: path parameters, the answers
each operation can give, the multipart request bodies and the security schemes.

Routes declare their answers with :func:`answers`; every error status points at
the one ``Error`` schema. Multipart bodies are only *declared* here
(:func:`multipart`): the handlers parse them themselves (api/batches.py,
api/intake.py), so the library never reads an upload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_openapi3 import OpenAPI, Tag
from flask_openapi3.models import Schema
from flask_openapi3.utils import get_model_schema
from pydantic import BaseModel, Field

from api import schemas

ERROR_REF = {"$ref": "#/components/schemas/Error"}
BEARER = "bearer"
API_KEY_HEADER = "apiKeyHeader"
SECURITY_SCHEMES: dict[str, Any] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer <key>` (`tussis keys create`).",
    },
    API_KEY_HEADER: {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
# Every operation needs a key unless it says ``security: []`` (PUBLIC).
SECURITY: list[dict[str, list[str]]] = [{BEARER: []}, {API_KEY_HEADER: []}]
PUBLIC: dict[str, Any] = {"security": []}

TAGS = {
    name: Tag(name=name, description=text)
    for name, text in [
        ("jobs", "One recording per job: submit, poll, list, delete."),
        ("batches", "Many recordings at once, with progress and a results CSV."),
        ("models", "The model bundles the workers serve, with their model cards."),
        ("health", "Liveness and readiness, without a key."),
        ("docs", "This document and its browsable page, without a key."),
        ("recordings", "Long recordings (hours) counted for coughs: events, hourly counts."),
        ("uploads", "Resumable uploads of long recordings (tus 1.0)."),
    ]
}


class JobPath(BaseModel):
    job_id: str = Field(description="A job's `id`.")


class BatchPath(BaseModel):
    batch_id: str = Field(description="A batch's `id`.")


def _header(description: str, type_: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": type_}}


RETRY_AFTER = _header("Seconds to wait before the next poll or retry.", "integer")
LOCATION = _header("The created (or replayed) resource's URL.")
REPLAYED = _header("`true`: this answer replays an earlier request with the same key.")
LINK = _header('`<...>; rel="next"`: the next page, while there is one.')
ETAG = _header(
    "A strong validator of this answer's state: send it back as `If-None-Match` to get "
    "`304` while nothing changed."
)
PREFERENCE_APPLIED = _header("`wait=N`: the server held the answer as `Prefer: wait=N` asked.")
NOT_MODIFIED: dict[str, Any] = {
    "description": "Not modified: the state is still the one `If-None-Match` names. No body.",
    "headers": {"ETag": ETAG, "Retry-After": RETRY_AFTER, "Preference-Applied": PREFERENCE_APPLIED},
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The `ETag` of the state the client has: `304 Not Modified` while it is "
    "still current.",
    "schema": {"type": "string", "maxLength": 1024},
}
PREFER_WAIT = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (RFC 7240, N up to 60): answer as soon as the resource has "
    "finished, or after N seconds with its state then (`Preference-Applied: wait=N`).",
    "schema": {"type": "string", "maxLength": 1024},
}

ERRORS: dict[int, dict[str, Any]] = {
    400: {
        "description": "A parameter is invalid (`invalid_limit`, `invalid_cursor`, "
        "`invalid_parameter`, ...), an API key was sent in the URL (`api_key_in_url`), or "
        "the Host is not one this service answers to (`host_not_allowed`).",
    },
    401: {
        "description": "No API key (`unauthorized`), or an unknown or revoked one "
        "(`invalid_api_key`).",
        "headers": {"WWW-Authenticate": _header("`Bearer`.")},
    },
    403: {
        "description": "Open mode (no keys) only: the request comes from a page of another "
        "origin (`origin_not_allowed`).",
    },
    404: {"description": "No such resource for this API key's owner."},
    409: {"description": "A conflict with the resource's state; see the code."},
    410: {
        "description": "The stored recordings this needs are gone (`audio_purged`): "
        "retention (`TUSSIS_AUDIO_RETENTION`) or a DELETE removed them."
    },
    413: {"description": "The upload is larger than allowed (`upload_too_large`)."},
    422: {"description": "The upload cannot be used; see the code (docs/api.md, Errors)."},
    429: {
        "description": "Past this key's request or upload-bytes limit (`rate_limited`).",
        "headers": {"Retry-After": RETRY_AFTER},
    },
    414: {"description": "The URL is too long (`uri_too_long`)."},
    412: {"description": "A tus request without `Tus-Resumable: 1.0.0`."},
    415: {"description": "The body's media type is not the one this operation takes."},
    431: {"description": "Too many or too large headers (`headers_too_large`)."},
    503: {
        "description": "The job database is unreachable right now (`database_unavailable`).",
        "headers": {"Retry-After": RETRY_AFTER},
    },
}
# What any request can be answered by the guards (api/guards.py), whatever it asks.
GUARDED = (400, 414, 431)
# What every operation that needs a key can answer, whatever it does.
KEYED = (400, 401, 403, 429, 503)

# Models referenced from answers by name: their schemas go into the components.
_REFERENCED: dict[str, type[BaseModel]] = {"Error": schemas.Error}


def ref(model: type[BaseModel]) -> dict[str, str]:
    _REFERENCED[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_answer(
    model: type[BaseModel], description: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ref(model)}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def file_answer(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def no_content(description: str) -> dict[str, Any]:
    return {"description": description}


def answers(
    successes: Mapping[int, dict[str, Any]], *errors: int, keyed: bool = True
) -> dict[int | str, Any]:
    """``responses`` for a route: its successes (and any error answer of its own body),
    then its error statuses, those of the guards and, unless ``keyed`` is False, those
    of any operation that needs a key, each with the shared Error body."""
    result: dict[int | str, Any] = {status: answer for status, answer in successes.items()}
    for status in sorted({*errors, *GUARDED, *(KEYED if keyed else ())} - set(successes)):
        result[status] = {**ERRORS[status], "content": {"application/json": {"schema": ERROR_REF}}}
    return result


def multipart(description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """``openapi_extensions`` declaring a multipart request body the handler parses itself."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {
        "requestBody": {
            "description": description,
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


# A file part (``format: binary``: clients and test generators send it as a file).
FILE = {"type": "string", "format": "binary"}
MODEL_FIELD = {
    "type": "string",
    "maxLength": 200,
    "description": "The model to score with: `name` (its newest active version) or "
    "`name@version`, as `GET /api/v1/models` lists them. Absent: the deployment's default. "
    "A model no live worker serves: `422 model_not_served`, with the served ones.",
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retried submission return the first one's resource "
    "(docs/api.md, Idempotent submissions).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}


def register_components(app: OpenAPI) -> None:
    """Put the schemas that answers reference by name into the document's components."""
    for name, model in _REFERENCED.items():
        schema = get_model_schema(model, mode="serialization")
        for def_name, definition in schema.pop("$defs", {}).items():
            app.components_schemas[def_name] = Schema(**definition)
        app.components_schemas[name] = Schema(**schema)


def document(app: OpenAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated once from the declared routes."""
    doc = app.api_doc
    for path_item in doc["paths"].values():
        for operation in path_item.values():
            # flask-openapi3 adds a 400 of its own validation body to operations that
            # do not declare one; ours never answer it (the public ones answer no 400).
            bad = operation.get("responses", {}).get("400", {})
            if bad.get("content", {}).get("application/json", {}).get("schema", {}).get("type"):
                del operation["responses"]["400"]
    return doc
