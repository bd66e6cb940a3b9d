"""API keys as data: created, listed, revoked and checked here.

Only a SHA-256 of each key is stored. The keys are 256-bit random tokens, so a
fast hash is enough (nobody can brute-force that space); a slow password hash
would only add latency to every request. A stolen database therefore yields no
usable key.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, or_, select, update
from sqlalchemy.orm import Session

from shared.db import affected
from shared.polls import KeyUse
from shared.tables import ApiKey, utcnow

KEY_PREFIX = "tus_"
# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
OWNER_MAX_LENGTH = 64


@dataclass(frozen=True)
class NewKey:
    id: str
    name: str
    owner: str
    key: str  # shown once, never stored


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, name: str, owner: str) -> NewKey:
    if not name.strip():
        raise ValueError("a key needs a name")
    if not owner.strip() or len(owner) > OWNER_MAX_LENGTH:
        raise ValueError(f"the owner must be 1 to {OWNER_MAX_LENGTH} characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=uuid.uuid4().hex[:12],
        name=name.strip(),
        owner=owner.strip(),
        key_hash=hash_key(key),
        prefix=key[: len(KEY_PREFIX) + 6],
        created_at=utcnow(),
        revoked=False,
    )
    session.add(row)
    return NewKey(row.id, row.name, row.owner, key)


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke(session: Session, key_id: str) -> bool:
    """True if this call revoked an active key."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked.is_(False))
        .values(revoked=True, revoked_at=utcnow())
    )
    return affected(result) == 1


def any_active(session: Session) -> bool:
    # Asked on every open-mode request: stop at the first active key, count none.
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked.is_(False)).limit(1)) is not None


def lookup(conn: Connection, key_hash: str) -> KeyUse | None:
    """The owner of an active key and when it was last recorded in use, or None: one
    read, never a write (:func:`record_use` writes, off the request's path)."""
    row = conn.execute(
        select(ApiKey.owner, ApiKey.last_used_at).where(
            ApiKey.key_hash == key_hash, ApiKey.revoked.is_(False)
        )
    ).first()
    return None if row is None else KeyUse(row.owner, row.last_used_at)


def owner_of(session: Session, key: str) -> str | None:
    """The owner of an active key, or None."""
    found = lookup(session.connection(), hash_key(key))
    return None if found is None else found.owner


def use_is_stale(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether ``last_used_at`` is due to be written again."""
    return last_used_at is None or last_used_at < now - LAST_USED_RESOLUTION


def record_use(session: Session, key_hash: str, now: datetime) -> bool:
    """Set ``last_used_at`` unless it was set within ``LAST_USED_RESOLUTION`` (the
    condition makes concurrent writers from several processes one write)."""
    result = session.execute(
        update(ApiKey)
        .where(
            ApiKey.key_hash == key_hash,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
    )
    return affected(result) == 1
