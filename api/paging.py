"""Query parameters shared by every paginated listing."""

from __future__ import annotations

from flask import request

from api.errors import ApiError

MAX_PAGE_SIZE = 200


def page_limit(default: int) -> int:
    try:
        limit = int(request.args.get("limit", default))
    except ValueError as exc:
        raise ApiError(400, "invalid_limit", "'limit' must be a whole number.") from exc
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ApiError(400, "invalid_limit", f"'limit' must be between 1 and {MAX_PAGE_SIZE}.")
    return limit


def invalid_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "'cursor' is not a value this API returned.")
