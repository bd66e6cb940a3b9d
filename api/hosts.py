"""Which Host names (and, in open mode, which page origins) the API answers: a guard
against DNS rebinding and forged cross-site posts.

A page on ``rebind.attacker.example`` can have its name re-pointed at 127.0.0.1 and
then call an API listening there as if it were its own site: the browser sends the
attacker's name as ``Host``. Loopback names (``localhost``, ``*.localhost``, loopback
addresses) cannot be re-pointed by anyone else, so:

- in open mode (no key at all, loopback only) the API answers loopback names and the
  names in ``TUSSIS_ALLOWED_HOSTS`` only (``400 host_not_allowed``), as Jupyter does;
  and since no key stands in the way, a request from a page of another origin (an
  ``Origin`` header naming any other host, a cross-site form post) is refused too
  (``403 origin_not_allowed``);
- with keys, a key guards every route, so any name is answered unless
  ``TUSSIS_ALLOWED_HOSTS`` is set: then loopback names and those only.

Probes (``/healthz``, ``/readyz``) and ``/metrics`` carry no tenant data and answer
any name: orchestrators and Prometheus reach them by an internal address
(``api:5000``), and ``/metrics`` has its own token.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import request

from api.errors import ApiError

UNGUARDED = frozenset({"/healthz", "/readyz", "/metrics"})
# host[:port], the host a name or an address in brackets.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::\d{1,5})?")


def host_name(value: str) -> str | None:
    """The name of a ``Host`` value (or an origin's host): lower-case, without its
    port or brackets; None when it is not a host name."""
    match = _HOST.fullmatch(value.strip().lower())
    return match.group(1).strip("[]").rstrip(".") if match else None


def is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def matches(name: str, allowed: Iterable[str]) -> bool:
    """``name`` is loopback, or one of ``allowed`` (``.example.org`` also matches its
    subdomains)."""
    if is_loopback(name):
        return True
    for pattern in allowed:
        if name == pattern.lstrip(".") or (pattern.startswith(".") and name.endswith(pattern)):
            return True
    return False


def _host_refused() -> ApiError:
    return ApiError(
        400,
        "host_not_allowed",
        "This service does not answer to the host name this request was sent to (a guard "
        "against DNS rebinding). Use the address it listens on, or ask its operator to add "
        "the name to TUSSIS_ALLOWED_HOSTS.",
    )


def check_host(allowed: tuple[str, ...]) -> None:
    """Any request but a probe or a scrape: its Host must be loopback or allowed."""
    if request.path in UNGUARDED:
        return
    name = host_name(request.host)
    if name is None or not matches(name, allowed):
        raise _host_refused()


def check_open_mode(allowed: tuple[str, ...]) -> None:
    """A request served without a key: a loopback (or allowed) Host, and no page of
    another origin behind it."""
    check_host(allowed)
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not sent by a page's script or form (curl, the client library)
    name = host_name(urlsplit(origin).netloc) if "://" in origin else None
    if name is None or not matches(name, allowed):
        raise ApiError(
            403,
            "origin_not_allowed",
            "Without API keys this service answers programs and its own page on this "
            "computer only, not pages of other sites.",
        )
