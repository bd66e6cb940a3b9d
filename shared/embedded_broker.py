"""The embedded broker: kombu's SQLAlchemy transport, polled every 0.1 s.

kombu polls this transport once a second by default, which caps a worker at
about one job per second; its transport options all go to ``create_engine``,
so the interval cannot be set there. A subclass under its own URL prefix
(``tussis-sqla+``) changes only the interval.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

PREFIX = "sqla+"
ALIAS = "tussis-sqla"


class Transport(SQLAlchemyTransport):
    polling_interval = 0.1


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")


def kombu_url(broker_url: str) -> str:
    """``sqla+sqlite:///x`` -> ``tussis-sqla+sqlite:///x``; other URLs unchanged."""
    if broker_url.startswith(PREFIX):
        return f"{ALIAS}+{broker_url[len(PREFIX) :]}"
    return broker_url
