"""A finished batch's stored evaluation: asked for by the API, computed once by a
worker (worker/evaluation.py), answered from the ``batch_evaluations`` row.

The API never computes an evaluation: a 2,000-round bootstrap per group over
thousands of items is seconds of CPU (11.5 s for 10,000 items in 5,000 groups),
and it was done on every request. Now the first request claims the row
(``pending``) and publishes one task; later requests find it pending, then
``ready`` or ``refused``. A pending row whose worker never answered (a lost message)
is claimed again after :data:`PENDING_LEASE_S`. A finished batch's items never
change, so the row stays valid until the batch is deleted (the row goes with it) or
one of its items is (:func:`forget`).

Every claim and store is a compare-and-set: a worker stores its result only over the
claim it was asked for, so a result computed before an item's deletion is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from shared.db import affected, insert_if_absent
from shared.tables import BatchEvaluation, utcnow

# The computation's version: raise it when what an evaluation holds changes, and rows
# of an older one are computed again when next asked for.
FORMAT = 3  # 2: training items left out of the headline, 3: baselines (issue 25)
DEFAULT = "default"  # the batch's labelled items as they are
COMPARE = "compare:"  # + another batch's id: both models on the items they share


def compare_variant(other_id: str) -> str:
    return f"{COMPARE}{other_id}"


def compared_with(variant: str) -> str | None:
    """The other batch of a comparison's variant; None for any other variant."""
    return variant[len(COMPARE) :] if variant.startswith(COMPARE) else None


PENDING, READY, REFUSED = "pending", "ready", "refused"
PENDING_LEASE_S = 300.0


@dataclass(frozen=True)
class Stored:
    """What a request finds: a ``ready`` or ``refused`` evaluation, else ``pending``
    (``publish`` is True for the one request that claimed it: it asks a worker)."""

    state: str
    body: dict[str, Any] | None = None
    roc_png: bytes | None = None
    calibration_png: bytes | None = None
    publish: bool = False


def _usable(row: BatchEvaluation | None) -> bool:
    return row is not None and row.format == FORMAT and row.state in (READY, REFUSED)


def request(
    session: Session, batch_id: str, variant: str = DEFAULT, now: datetime | None = None
) -> Stored:
    """The stored evaluation of a finished batch, or a claim to have it computed. The
    caller commits, then publishes the task if ``publish``."""
    now = now or utcnow()
    row = session.get(BatchEvaluation, (batch_id, variant))
    if row is not None and _usable(row):
        return Stored(row.state, row.body, row.roc_png, row.calibration_png)
    fresh = {"format": FORMAT, "state": PENDING, "requested_at": now, "finished_at": None}
    if row is None:
        won = insert_if_absent(
            session, BatchEvaluation, {"batch_id": batch_id, "variant": variant, **fresh}
        )
        return Stored(PENDING, publish=won)
    if row.format == FORMAT and row.requested_at > now - timedelta(seconds=PENDING_LEASE_S):
        return Stored(PENDING)  # a worker has been asked already
    # An older format, or a request nobody answered: claim it again.
    result = session.execute(
        update(BatchEvaluation)
        .where(
            BatchEvaluation.batch_id == batch_id,
            BatchEvaluation.variant == variant,
            BatchEvaluation.requested_at == row.requested_at,
        )
        .values(**fresh, body=None, roc_png=None, calibration_png=None)
    )
    return Stored(PENDING, publish=affected(result) == 1)


def claimed_at(session: Session, batch_id: str, variant: str = DEFAULT) -> datetime | None:
    """When the pending evaluation a worker is to compute was asked for; None when
    there is nothing to compute (already stored, or forgotten since)."""
    row = session.get(BatchEvaluation, (batch_id, variant))
    if row is None or row.state != PENDING or row.format != FORMAT:
        return None
    return row.requested_at


def store(
    session: Session,
    batch_id: str,
    variant: str,
    asked_at: datetime,
    *,
    body: dict[str, Any],
    refused: bool = False,
    roc_png: bytes | None = None,
    calibration_png: bytes | None = None,
) -> bool:
    """Store a computed evaluation (or, ``refused``, the refusal's code and message)
    over the claim made at ``asked_at``; False when that claim is gone (an item was
    deleted meanwhile, or the claim was taken again)."""
    result = session.execute(
        update(BatchEvaluation)
        .where(
            BatchEvaluation.batch_id == batch_id,
            BatchEvaluation.variant == variant,
            BatchEvaluation.state == PENDING,
            BatchEvaluation.requested_at == asked_at,
        )
        .values(
            state=REFUSED if refused else READY,
            finished_at=utcnow(),
            body=body,
            roc_png=roc_png,
            calibration_png=calibration_png,
        )
    )
    return affected(result) == 1


def release(session: Session, batch_id: str, variant: str, asked_at: datetime) -> None:
    """Drop a claim whose computation failed, so the next request asks again."""
    session.execute(
        delete(BatchEvaluation).where(
            BatchEvaluation.batch_id == batch_id,
            BatchEvaluation.variant == variant,
            BatchEvaluation.requested_at == asked_at,
        )
    )


def forget(session: Session, batch_id: str) -> None:
    """The batch's items changed (one was deleted): every stored view of it is stale,
    and so is every comparison of another batch with it."""
    session.execute(delete(BatchEvaluation).where(BatchEvaluation.batch_id == batch_id))
    session.execute(
        delete(BatchEvaluation).where(BatchEvaluation.variant == compare_variant(batch_id))
    )
