"""Which model bundles the workers serve, recorded in SQL so the API can list
them without reading bundle files or importing the model runtime. The worker
reads the bundle (``ml.bundle``) and hands its fingerprint and manifest here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import affected
from shared.tables import ServedModel, utcnow

DIAGNOSIS = "diagnosis"
COUGH_GATE = "cough_gate"


@dataclass(frozen=True)
class ModelNote:
    """What a result repeats from its model's manifest (the one source of truth)."""

    caveat: str | None = None
    within_source_auc: float | None = None

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> ModelNote:
        # Older bundles carry neither field; a malformed one is shown as unknown.
        caveat, auc = manifest.get("caveat"), manifest.get("within_source_auc")
        return cls(
            caveat if isinstance(caveat, str) and caveat.strip() else None,
            float(auc) if isinstance(auc, int | float) and not isinstance(auc, bool) else None,
        )


def register(session: Session, role: str, fingerprint: str, manifest: dict[str, Any]) -> None:
    """Record (or refresh) a served bundle, keyed by its fingerprint."""
    now = utcnow()
    values = {
        "role": role,
        "name": manifest["name"],
        "version": manifest["version"],
        "manifest": manifest,
        "last_seen_at": now,
    }
    updated = session.execute(
        update(ServedModel).where(ServedModel.fingerprint == fingerprint).values(**values)
    )
    if affected(updated) == 0:
        try:
            with session.begin_nested():
                session.add(ServedModel(fingerprint=fingerprint, first_seen_at=now, **values))
        except IntegrityError:
            pass  # another worker registered it at the same moment


def touch(session: Session, fingerprints: list[str]) -> None:
    session.execute(
        update(ServedModel)
        .where(ServedModel.fingerprint.in_(fingerprints))
        .values(last_seen_at=utcnow())
    )


def list_served(session: Session) -> list[ServedModel]:
    return list(
        session.scalars(
            select(ServedModel).order_by(ServedModel.last_seen_at.desc(), ServedModel.name)
        )
    )
