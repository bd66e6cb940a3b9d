"""Who is calling.

Every ``/api/`` request is authenticated before its view runs (and before the
rate limiter counts it, so limits are per key). A key is sent as
``Authorization: Bearer <key>`` and looked up by its hash in the database
(``tussis keys create``), or matched against the bootstrap ``TUSSIS_API_KEYS``.

With no key configured at all the service is *open*: every caller is
``anonymous``. That is allowed only when the API listens on loopback and the
request comes from loopback; :func:`check_can_start` refuses to start an open
service on any other address.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from api import docs, hosts
from api.errors import ApiError
from shared import api_keys
from shared.config import Settings, SettingsError
from shared.db import session_scope

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
# Query parameters that carry a credential by mistake (and would be logged with the URL).
_KEY_PARAMS = ("api_key", "apikey", "key", "token", "access_token")


@dataclass(frozen=True)
class Caller:
    owner: str
    # What rate limits count against: the key (never the key itself), or the address.
    limit_key: str


def is_loopback_bind(address: str) -> bool:
    """``127.0.0.1:5000``, ``[::1]:5000`` and ``localhost:5000`` are loopback;
    ``0.0.0.0:5000``, ``:5000``, ``unix:/path`` and any other host are not."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback_peer(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def database_has_keys(settings: Settings) -> bool:
    with session_scope(settings.database_url) as session:
        return api_keys.any_active(session)


def check_can_start(settings: Settings) -> str:
    """Refuse an open service on a non-loopback address; say which mode it runs in."""
    binds = settings.bind_addresses
    if settings.key_owners:
        return "API keys required (bootstrap keys from TUSSIS_API_KEYS, and database keys)"
    if all(is_loopback_bind(b) for b in binds):
        return (
            "API keys required (database keys)"
            if _keys_in_database(settings)
            else "OPEN MODE: no API keys are configured; serving loopback only "
            f"({', '.join(binds)})"
        )
    if _keys_in_database(settings) is False:
        raise SettingsError(
            f"no API keys are configured and the API would listen on {', '.join(binds)}, "
            "which is not loopback: it refuses to serve health data to everyone. Create a key "
            "with `tussis keys create NAME --owner TENANT` (or set TUSSIS_API_KEYS), or bind to "
            "127.0.0.1 for local use."
        )
    return "API keys required (database keys)"


def _keys_in_database(settings: Settings) -> bool | None:
    """None when the database cannot be asked (requests will still need a key)."""
    try:
        return database_has_keys(settings)
    except Exception as exc:
        log.warning("could not check for API keys in the database (%s)", type(exc).__name__)
        return None


def _unauthorized(message: str, code: str = "unauthorized") -> ApiError:
    return ApiError(401, code, message, {"WWW-Authenticate": "Bearer"})


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() != "bearer":
        raise _unauthorized("Send the API key as 'Authorization: Bearer <key>'.")
    return token.strip()


def _authenticate(settings: Settings) -> Caller:
    for name in _KEY_PARAMS:
        if name in request.args:
            raise ApiError(
                400,
                "api_key_in_url",
                "Send the API key in the 'Authorization: Bearer' header, never in the URL "
                "(URLs are logged and cached). If it was a real key, revoke it.",
            )
    token = _bearer_token() or request.headers.get("X-API-Key", "").strip()
    if token:
        for known, owner in current_app.extensions["tussis.settings"].key_owners.items():
            if hmac.compare_digest(token.encode(), known.encode()):
                return Caller(owner, f"bootstrap:{owner}")
        with session_scope(settings.database_url) as session:
            owner = api_keys.owner_of(session, token)
        if owner is None:
            raise _unauthorized(
                "This API key is not valid (unknown or revoked).", "invalid_api_key"
            )
        return Caller(owner, f"key:{api_keys.hash_key(token)[:16]}")
    open_mode = (
        not settings.key_owners
        and all(is_loopback_bind(b) for b in settings.bind_addresses)
        and _is_loopback_peer(request.remote_addr)
        and not database_has_keys(settings)
    )
    if open_mode:
        # No key stands in the way: only loopback names and no other site's page.
        hosts.check_open_mode(settings.allowed_hosts)
        return Caller(ANONYMOUS, f"addr:{request.remote_addr}")
    raise _unauthorized("A valid API key is required: send 'Authorization: Bearer <key>'.")


def init_app(app: Flask) -> None:
    @app.before_request
    def _authenticate_api_requests() -> None:
        # The OpenAPI document and its page describe routes, nothing of any tenant.
        if request.path.startswith("/api/") and request.path not in docs.PUBLIC_PATHS:
            g.tussis_caller = _authenticate(app.extensions["tussis.settings"])


def current_caller() -> Caller:
    caller: Caller | None = g.get("tussis_caller")
    if caller is None:  # a route outside /api/ asked: authenticate it the same way
        caller = g.tussis_caller = _authenticate(current_app.extensions["tussis.settings"])
    return caller


def current_owner() -> str:
    return current_caller().owner
