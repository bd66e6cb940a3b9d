"""Rejections of declared request parameters, in the API's one error shape.

flask-openapi3 validates query and path parameters against the models the routes
declare and hands a failure to :func:`raise_parameter_error`, which raises the
``ApiError`` the error handler answers: ``400`` with ``invalid_limit``,
``invalid_cursor`` or ``invalid_parameter``, never the library's own body.
"""

from __future__ import annotations

from typing import NoReturn

from pydantic import ValidationError

from api.errors import ApiError
from api.paging import MAX_PAGE_SIZE, invalid_cursor, invalid_limit

# Anything but a number in range (api/paging.py lets only ASCII digits through).
NOT_A_NUMBER = {"int_type", "int_parsing", "int_from_float", "value_error"}


def raise_parameter_error(exc: ValidationError) -> NoReturn:
    first = exc.errors(include_url=False, include_input=False)[0]
    name = str(first["loc"][0]) if first["loc"] else "request"
    if name == "limit":
        if first["type"] in NOT_A_NUMBER:
            raise invalid_limit("'limit' must be a whole number.") from exc
        raise invalid_limit(f"'limit' must be between 1 and {MAX_PAGE_SIZE}.") from exc
    if name == "cursor":
        raise invalid_cursor() from exc
    reason = first["msg"].rstrip(".")
    raise ApiError(400, "invalid_parameter", f"'{name}' is not valid: {reason}.") from exc
