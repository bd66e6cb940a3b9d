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
from datetime import datetime

from flask import Flask, Response, after_this_request, current_app, g, request

from api import docs, hosts
from api.errors import ApiError
from shared import api_keys, logs
from shared.config import Settings, SettingsError
from shared.db import read_once, session_scope
from shared.polls import Access, KeyUse, Polled
from shared.tables import utcnow

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
# Query parameters that carry a credential by mistake (and would be logged with the URL).
_KEY_PARAMS = ("api_key", "apikey", "key", "token", "access_token")


@dataclass(frozen=True)
class Caller:
    # None only while a poll checks its database key in its own read (CHECKED_BY_THE_READ).
    owner: str | None
    # What rate limits count against: the key (never the key itself), or the address.
    limit_key: str
    key_hash: str | None = None  # a database key's: what the poll's read checks


# Polls: their one read checks the database key too (shared/polls.py), so that a poll
# costs one round trip, not one for the key and one for the job.
CHECKED_BY_THE_READ = frozenset({"jobs.get_job", "batches.get_batch", "batches.list_items"})

# Per process: when each key's use was last written, so that a key polled many times a
# second is written at most once a minute (api_keys.LAST_USED_RESOLUTION).
_use_written: dict[str, datetime] = {}


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
        key_hash = api_keys.hash_key(token)
        caller = Caller(None, f"key:{key_hash[:16]}", key_hash)
        if request.endpoint in CHECKED_BY_THE_READ:
            return caller
        return _checked(caller)
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


def _checked(caller: Caller) -> Caller:
    """A database key's caller, its key looked up on its own (one read)."""
    assert caller.key_hash is not None
    key_hash = caller.key_hash
    url = current_app.extensions["tussis.settings"].database_url
    return _settled(caller, read_once(url, lambda conn: api_keys.lookup(conn, key_hash)))


def _settled(caller: Caller, found: KeyUse | None) -> Caller:
    """The caller of a database key once a read found it (or 401 when it did not)."""
    if found is None:
        raise _unauthorized("This API key is not valid (unknown or revoked).", "invalid_api_key")
    if caller.owner is not None:
        return caller  # settled by an earlier read of this request (a long poll's)
    assert caller.key_hash is not None
    _record_use_later(caller.key_hash, found.last_used_at)
    return Caller(found.owner, caller.limit_key, caller.key_hash)


def _set_caller(caller: Caller) -> str:
    """This request's caller from now on; its owner is named in its log lines."""
    if g.get("tussis_caller") is not caller:
        g.tussis_caller = caller
        assert caller.owner is not None
        bind_owner(caller.owner)
    assert caller.owner is not None
    return caller.owner


def _record_use_later(key_hash: str, last_used_at: datetime | None) -> None:
    """Write the key's ``last_used_at`` once this request's answer is sent (never inside
    the read, and at most once a minute per key and process)."""
    now = utcnow()
    if not api_keys.use_is_stale(last_used_at, now):
        return
    written = _use_written.get(key_hash)
    if written is not None and not api_keys.use_is_stale(written, now):
        return
    url = current_app.extensions["tussis.settings"].database_url

    def write() -> None:
        try:
            with session_scope(url) as session:
                api_keys.record_use(session, key_hash, now)
            _use_written[key_hash] = now
        except Exception as exc:  # a timestamp is not worth an error
            log.warning("could not record an API key's last use (%s)", type(exc).__name__)

    @after_this_request
    def _after(response: Response) -> Response:
        response.call_on_close(write)
        return response


def poll_access() -> Access:
    """Who asks, for a poll's read: the database key to check in it (every read of a
    long poll checks it again), or the owner of a bootstrap key or open mode."""
    caller = current_caller()
    if caller.key_hash is not None:
        return Access(key_hash=caller.key_hash)
    return Access(owner=caller.owner)


def settle(polled: Polled) -> str:
    """After a poll's read: the caller's owner, or 401 when its key was not found."""
    caller = current_caller()
    if caller.key_hash is None:
        assert caller.owner is not None
        return caller.owner
    return _set_caller(_settled(caller, polled.key if polled.valid else None))


def bind_owner(owner: str) -> None:
    """The rest of the request's log lines name the owner."""
    g.setdefault("tussis_log_tokens", []).extend(logs.bind(owner=owner))


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
    caller = current_caller()
    if caller.owner is None:  # a poll's view asked before its read: check the key now
        return _set_caller(_checked(caller))
    return caller.owner
