"""Query parameters shared by every paginated listing, and their answers.

Every listing (jobs, batches, a batch's items) takes ``limit`` and ``cursor``,
answers ``next_cursor`` in its body, and a ``Link: <...>; rel="next"`` header
while there is a next page. Cursors are opaque (shared/cursors.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlencode

from flask import Response, jsonify, request
from pydantic import BaseModel, BeforeValidator, Field
from pydantic.json_schema import SkipJsonSchema

from api.errors import ApiError
from shared.cursors import MAX_LENGTH

MAX_PAGE_SIZE = 200
_DIGITS = re.compile(r"[0-9]{1,9}", re.ASCII)


def _whole_number(value: object) -> object:
    """ASCII digits only: pydantic alone would also take "1.0", " 5" or "+5"."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("not a whole number")
    return value


def _no_default(schema: dict[str, Any]) -> None:
    # The default (None: the server's page size, or the first page) is no value to send.
    schema.pop("default", None)


def _limit_schema(schema: dict[str, Any]) -> None:
    _no_default(schema)
    # Stated here: pydantic leaves the range out beside the digits-only check.
    schema.update(minimum=1, maximum=MAX_PAGE_SIZE)


class PageQuery(BaseModel):
    # Absent means the server's page size; the document shows no null to send.
    limit: (
        Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=MAX_PAGE_SIZE)]
        | SkipJsonSchema[None]
    ) = Field(
        default=None,
        description=f"Items per page, 1 to {MAX_PAGE_SIZE} (default `TUSSIS_PAGE_SIZE`).",
        json_schema_extra=_limit_schema,
    )
    cursor: (
        Annotated[str, Field(max_length=MAX_LENGTH, pattern=r"^[A-Za-z0-9_-]*$")]
        | SkipJsonSchema[None]
    ) = Field(
        default=None,
        description="`next_cursor` of the previous page; absent or empty for the first page.",
        json_schema_extra=_no_default,
    )

    def page_size(self, default: int) -> int:
        return self.limit if self.limit is not None else default


def invalid_limit(message: str = f"'limit' must be between 1 and {MAX_PAGE_SIZE}.") -> ApiError:
    return ApiError(400, "invalid_limit", message)


def invalid_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "'cursor' is not a value this API returned.")


def page_response(body: dict[str, Any], next_cursor: str | None, limit: int) -> Response:
    """``body`` as JSON, with a ``Link`` to the next page when there is one."""
    response = jsonify(body)
    if next_cursor:
        query = urlencode({"limit": limit, "cursor": next_cursor})
        response.headers["Link"] = f'<{request.path}?{query}>; rel="next"'
    return response
