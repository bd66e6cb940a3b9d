"""``Idempotency-Key`` rows (table ``idempotency_keys``): claim a key before doing the
work, record the resource it created, or release it when the work was refused.

A key is scoped to an owner and a route ("jobs", "batches"). The claim is a plain
INSERT so that the primary key decides between two concurrent requests: exactly one
inserts, the other sees the row. An expired row counts as absent and is taken over
by a compare-and-set UPDATE (the retention task deletes such rows eventually).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db import affected, insert_if_absent
from shared.tables import IdempotencyKey, utcnow

KEY_TTL = timedelta(hours=24)
# A claim still unfinished after this long belongs to a request that died (worker killed
# mid-request): it is taken over, or its key would answer 409 for a whole day. Well above
# the longest upload a client waits for (the CLI waits 15 min for a batch part's answer).
ABANDONED_AFTER = timedelta(hours=1)


class Outcome(enum.StrEnum):
    CLAIMED = "claimed"  # this request owns the key: do the work, then complete()
    REPLAY = "replay"  # the same request already succeeded: answer with its resource
    IN_PROGRESS = "in_progress"  # the same key is being worked on right now
    MISMATCH = "mismatch"  # the key was used for a different request body


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    resource_id: str | None = None


def claim(
    session: Session,
    owner: str,
    route: str,
    key: str,
    request_hash: str,
    now: datetime | None = None,
    ttl: timedelta = KEY_TTL,
    abandoned_after: timedelta = ABANDONED_AFTER,
) -> Claim:
    """Claim ``key`` for a request whose body hashes to ``request_hash``, or say why
    not. The caller commits at once, so other requests see the claim."""
    now = now or utcnow()
    pk = (
        (IdempotencyKey.owner == owner)
        & (IdempotencyKey.route == route)
        & (IdempotencyKey.key == key)
    )
    fresh = {"request_hash": request_hash, "resource_id": None, "created_at": now}
    # A row can vanish between the INSERT and the SELECT (released by a failed request,
    # or pruned); a few rounds settle that.
    for _ in range(3):
        if insert_if_absent(
            session,
            IdempotencyKey,
            {"owner": owner, "route": route, "key": key, **fresh, "expires_at": now + ttl},
        ):
            return Claim(Outcome.CLAIMED)
        # Expired or abandoned: take it over; the new values no longer match the WHERE,
        # so only one of two concurrent takers wins.
        gone = (IdempotencyKey.expires_at <= now) | (
            IdempotencyKey.resource_id.is_(None)
            & (IdempotencyKey.created_at <= now - abandoned_after)
        )
        taken = session.execute(
            update(IdempotencyKey).where(pk & gone).values(**fresh, expires_at=now + ttl)
        )
        if affected(taken) == 1:
            return Claim(Outcome.CLAIMED)
        row = session.execute(select(IdempotencyKey).where(pk)).scalar_one_or_none()
        if row is None:
            continue
        if row.request_hash != request_hash:
            return Claim(Outcome.MISMATCH, row.resource_id)
        if row.resource_id is None:
            return Claim(Outcome.IN_PROGRESS)
        return Claim(Outcome.REPLAY, row.resource_id)
    return Claim(Outcome.IN_PROGRESS)


def complete(session: Session, owner: str, route: str, key: str, resource_id: str) -> None:
    """Record the resource the claimed request created: from now on it is replayed."""
    session.execute(
        update(IdempotencyKey)
        .where(
            (IdempotencyKey.owner == owner)
            & (IdempotencyKey.route == route)
            & (IdempotencyKey.key == key)
            & IdempotencyKey.resource_id.is_(None)
        )
        .values(resource_id=resource_id)
    )


def release(session: Session, owner: str, route: str, key: str) -> None:
    """Forget a claim whose request was refused or failed, so that a retry can proceed
    (only an unfinished claim: a completed key keeps answering with its resource)."""
    session.execute(
        delete(IdempotencyKey).where(
            (IdempotencyKey.owner == owner)
            & (IdempotencyKey.route == route)
            & (IdempotencyKey.key == key)
            & IdempotencyKey.resource_id.is_(None)
        )
    )
