"""Which URLs a batch callback may reach: a guard against server-side request forgery.

A callback URL comes from an API client, and the worker POSTs to it from inside
our network. So the URL's host is resolved and refused if ANY of its addresses
is internal (loopback, private, link-local, metadata services, ...) or one of
this host's own (a public address too: a service of the worker's host that
listens on every interface, Redis or the metrics port, is reached through it on
any port), unless an operator allowed its network (``TUSSIS_CALLBACK_ALLOWED_NETWORKS``).
An allowed network opens the host's own address in it only when it names that
address alone (``192.0.2.2/32``): allowing "our private network" for receivers
does not open the host itself. The API
checks at submission; the worker checks again before each attempt (DNS may have
changed) and once more on the connected socket (DNS rebinding).

Stdlib only: the API process imports this.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], tuple[Address, ...]]

MAX_URL_LENGTH = 2048

INVALID_URL = "invalid_callback_url"
CREDENTIALS_IN_URL = "callback_credentials_not_allowed"
HOST_UNRESOLVABLE = "callback_host_unresolvable"
ADDRESS_NOT_ALLOWED = "callback_address_not_allowed"

# Letters, digits, dots, hyphens, underscores: anything else in a host name is
# where URL parsers disagree (backslashes, percent-escapes, Unicode look-alikes).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
# NAT64 (RFC 6052): a gateway forwards these to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class CallbackUrlError(ValueError):
    """A callback URL we will not call: ``code`` for machines, ``message`` a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Target:
    """A checked callback URL and the addresses its host resolved to."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[Address, ...]

    @property
    def loggable(self) -> str:
        """scheme://host:port/path: never the query or userinfo, which may hold secrets."""
        return _loggable(self.scheme, self.host, self.port, self.path)


def _loggable(scheme: str, host: str, port: int, path: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path or '/'}"


def _invalid(detail: str) -> CallbackUrlError:
    return CallbackUrlError(INVALID_URL, f"'callback_url' must be an absolute http(s) URL{detail}.")


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a well-formed http(s) URL, else CallbackUrlError."""
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f" of at most {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise _invalid(" without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _invalid(" with a valid host and port") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise _invalid("")
    if "@" in parts.netloc:
        # Credentials in the URL would be stored with the batch and shown back in it.
        raise CallbackUrlError(
            CREDENTIALS_IN_URL,
            "'callback_url' must not contain a user name or password; put a token in its path "
            "or verify the signature instead.",
        )
    host = parts.hostname or ""
    if not host:
        raise _invalid(" with a host")
    if ":" in host or host.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise _invalid(" with a valid host") from exc
    elif not _HOST_NAME.fullmatch(host):
        raise _invalid(" whose host is a plain ASCII name (use the punycode form of an IDN)")
    return scheme, host, port or (443 if scheme == "https" else 80), parts.path


def loggable(url: str) -> str:
    """The URL as it may be logged (no query, no userinfo), even for a malformed one."""
    try:
        return _loggable(*parse(url))
    except CallbackUrlError:
        return "<invalid URL>"


def resolve(host: str, port: int) -> tuple[Address, ...]:
    """Every address ``host`` resolves to. getaddrinfo also normalises numeric forms
    (``0x7f000001``, ``2130706433``, ``127.1``) to the address they mean."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # A scope (``fe80::1%eth0``) says which interface, not which address.
    found = (ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)
    return tuple(dict.fromkeys(found))


def _kind(address: Address) -> str | None:
    """Why an address is internal, or None for a public one."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-public"  # e.g. 100.64.0.0/10, shared (carrier-grade NAT) space
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (inner := _kind(embedded)) is not None:
            return f"{inner}, embedded in an IPv6 address"
    return None


OWN_ADDRESS = "this host's own address"


def is_own_address(address: Address) -> bool:
    """Whether ``address`` belongs to this host (loopback aside). The kernel routes a
    packet to one of its own addresses back to itself, with that very address as the
    source, so a UDP socket "connected" to it (which sends nothing) reports it as its
    own address; any other destination gets an outgoing interface's address."""
    family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((str(address), 9))
            source = ipaddress.ip_address(str(sock.getsockname()[0]).split("%", 1)[0])
        except (OSError, ValueError):
            return False  # no route: not ours
    return source == address and not address.is_loopback


def refusal(address: Address, allowed: Iterable[Network] = ()) -> str | None:
    """Why a connection to ``address`` is refused, or None when it is allowed."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d reaches a.b.c.d: judge (and allow-list) what it reaches.
        address = address.ipv4_mapped
    own = is_own_address(address)
    allowing = [net for net in allowed if address.version == net.version and address in net]
    if allowing:
        # The host's own address only when the operator named it by itself.
        if own and not any(net.num_addresses == 1 for net in allowing):
            return OWN_ADDRESS
        return None
    return OWN_ADDRESS if own else _kind(address)


def not_allowed(kind: str) -> CallbackUrlError:
    if kind == OWN_ADDRESS:
        return CallbackUrlError(
            ADDRESS_NOT_ALLOWED,
            f"'callback_url' reaches {OWN_ADDRESS}, where the service's own processes listen; "
            "callbacks may call it only if the operator allows that address by itself.",
        )
    return CallbackUrlError(
        ADDRESS_NOT_ALLOWED,
        f"'callback_url' reaches an internal address ({kind}); callbacks may only go to public "
        "addresses unless the operator allows that network.",
    )


def check_address(address: str, allowed: Iterable[Network] = ()) -> None:
    """Refuse a connected peer's address (the last word, after DNS has had its say)."""
    kind = refusal(ipaddress.ip_address(address.split("%", 1)[0]), allowed)
    if kind is not None:
        raise not_allowed(kind)


def check_url(url: str, allowed: Iterable[Network] = (), resolver: Resolver = resolve) -> Target:
    """Parse ``url`` and resolve its host; CallbackUrlError unless every address is allowed."""
    scheme, host, port, path = parse(url)
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise CallbackUrlError(
            HOST_UNRESOLVABLE, f"The host of 'callback_url' ({host}) does not resolve."
        ) from exc
    if not addresses:
        raise CallbackUrlError(
            HOST_UNRESOLVABLE, f"The host of 'callback_url' ({host}) does not resolve."
        )
    networks = tuple(allowed)
    for address in addresses:
        kind = refusal(address, networks)
        if kind is not None:
            raise not_allowed(kind)
    return Target(scheme, host, port, path, addresses)
