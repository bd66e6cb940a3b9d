"""Which model bundles the workers serve, recorded in SQL so the API can list
them without reading bundle files or importing the model runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.bundle import fingerprint, read_manifest
from shared.db import session_scope
from shared.models import ServedModel, utcnow

DIAGNOSIS = "diagnosis"
COUGH_GATE = "cough_gate"


def register(database_url: str, role: str, bundle: Path) -> str:
    """Record (or refresh) a served bundle; returns its fingerprint."""
    manifest = read_manifest(bundle)
    key = fingerprint(bundle)
    now = utcnow()
    values = {
        "role": role,
        "name": manifest.name,
        "version": manifest.version,
        "manifest": manifest.to_dict(),
        "last_seen_at": now,
    }
    with session_scope(database_url) as session:
        updated = session.execute(
            update(ServedModel).where(ServedModel.fingerprint == key).values(**values)
        )
        if updated.rowcount == 0:
            try:
                with session.begin_nested():
                    session.add(ServedModel(fingerprint=key, first_seen_at=now, **values))
            except IntegrityError:
                pass  # another worker registered it at the same moment
    return key


def touch(database_url: str, fingerprints: list[str]) -> None:
    with session_scope(database_url) as session:
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


def describe(model: ServedModel) -> dict[str, Any]:
    manifest = model.manifest
    return {
        "id": model.name,
        "version": model.version,
        "role": model.role,
        "fingerprint": model.fingerprint,
        "backbone": manifest.get("backbone", {}).get("name"),
        "labels": manifest.get("labels"),
        "threshold": manifest.get("threshold"),
        "first_seen_at": model.first_seen_at.isoformat().replace("+00:00", "Z"),
        "last_seen_at": model.last_seen_at.isoformat().replace("+00:00", "Z"),
        "card": manifest.get("card", {}),
    }
