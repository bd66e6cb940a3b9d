"""How every poll answers (a job, a batch, a page of a batch's items): one read of the
key and the rows (shared/polls.py), an ``ETag``, ``304 Not Modified`` for a client
that already has this state (``If-None-Match``), and a long poll (``Prefer: wait=N``)
where the resource has an end to wait for (api/waiting.py).

A ``304`` counts against the rate limit like any request: it costs the service the
same database round trip as a ``200`` (only the body is saved). A client that wants to
wait cheaply asks ``Prefer: wait``, which turns many polls into one request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Response, jsonify, request

from api import waiting
from api.auth import poll_access, settle
from api.errors import ApiError
from shared.db import read_once
from shared.polls import Access, Polled

# The status of an answer to a client that hung up while it waited (as nginx logs it);
# nobody reads it.
CLIENT_GONE = 499


@dataclass
class Answer:
    """What a poll's rows become: the ETag, the body (built only for a 200), and the
    headers every answer carries (``Retry-After`` while unfinished, ``Link``)."""

    etag: str
    body: Callable[[], dict[str, Any]]
    headers: dict[str, str] = field(default_factory=dict)


def read(url: str, query: Callable[[Any, Access], Polled], not_found: ApiError) -> list[Any]:
    """The rows of one poll's read; 401 for a bad key, 404 when there are none."""
    access = poll_access()
    polled = read_once(url, lambda conn: query(conn, access))
    settle(polled)
    if not polled.rows:
        raise not_found
    return polled.rows


def answer(
    fetch: Callable[[], list[Any]],
    build: Callable[[list[Any]], Answer],
    *,
    wait_key: str | None = None,
    finished: Callable[[list[Any]], bool] = lambda _rows: True,
) -> Response:
    """Read (``fetch``), wait if asked and ``wait_key`` names what to wait for, then
    answer ``build``'s ETag and body, or ``304`` when the client has them already."""
    seconds = waiting.requested_wait(request.headers.get("Prefer")) if wait_key else None
    waiter = None
    if seconds and wait_key:
        # Registered before the first read: a notification sent after it is not missed.
        waiter = waiting.hub().register(wait_key, waiting.client_socket())
    try:
        rows = fetch()
        if waiter is not None and seconds:
            deadline = time.monotonic() + seconds
            while not finished(rows):
                woken = waiter.wait(deadline - time.monotonic())
                if waiter.gone:
                    return Response(status=CLIENT_GONE)
                waiter.event.clear()
                rows = fetch()  # the state now, whether woken or at the end of the wait
                if not woken or time.monotonic() >= deadline:
                    break
    finally:
        if waiter is not None:
            waiting.hub().unregister(waiter)
    result = build(rows)
    headers = dict(result.headers)
    if waiter is not None and seconds:
        headers.update(waiting.preference_applied(seconds))
    if request.if_none_match.contains_weak(result.etag):
        response = Response(status=304)
    else:
        response = jsonify(result.body())
    response.set_etag(result.etag)
    for name, value in headers.items():
        response.headers[name] = value
    return response
