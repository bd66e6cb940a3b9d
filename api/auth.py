"""Who is calling. Without ``TUSSIS_API_KEYS`` every caller is ``anonymous``
and sees the same jobs; with it, a key is required and each key's owner sees
only their own jobs."""

from __future__ import annotations

import hmac

from flask import current_app, request

from api.errors import ApiError

ANONYMOUS = "anonymous"


def current_owner() -> str:
    keys: dict[str, str] = current_app.extensions["tussis.settings"].key_owners
    if not keys:
        return ANONYMOUS
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    token = token or request.headers.get("X-API-Key", "").strip()
    for known, owner in keys.items():
        if token and hmac.compare_digest(token.encode(), known.encode()):
            return owner
    raise ApiError(
        401,
        "unauthorized",
        "A valid API key is required: send 'Authorization: Bearer <key>'.",
        {"WWW-Authenticate": "Bearer"},
    )
