"""Which model bundles the workers serve, recorded in SQL so the API can list
them without reading bundle files or importing the model runtime. The worker
reads the bundle (``ml.bundle``) and hands its fingerprint and manifest here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
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


def register(
    session: Session,
    role: str,
    fingerprint: str,
    manifest: dict[str, Any],
    *,
    is_default: bool = False,
    queue: str | None = None,
) -> None:
    """Record (or refresh) a served bundle, keyed by its fingerprint: ``is_default`` for
    the first diagnosis bundle of its worker, ``queue`` the worker's ``TUSSIS_QUEUE``."""
    now = utcnow()
    values = {
        "role": role,
        "name": manifest["name"],
        "version": manifest["version"],
        "manifest": manifest,
        "last_seen_at": now,
        "is_default": is_default,
        "queue": queue,
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


def _of_queue(queue: str | None) -> Any:
    # Rows from before migration 0010 carry no queue: they belong to every deployment.
    return True if queue is None else or_(ServedModel.queue == queue, ServedModel.queue.is_(None))


def list_served(session: Session, queue: str | None = None) -> list[ServedModel]:
    return list(
        session.scalars(
            select(ServedModel)
            .where(_of_queue(queue))
            .order_by(ServedModel.last_seen_at.desc(), ServedModel.name)
        )
    )


def is_active(model: ServedModel, grace_s: float) -> bool:
    """Whether some worker said it serves ``model`` within the last ``grace_s``."""
    return model.last_seen_at >= utcnow() - timedelta(seconds=grace_s)


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    # "2026.12.07" > "2026.9.1" and "1.10" > "1.9": numbers compare as numbers.
    parts = version.replace("-", ".").split(".")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def active_diagnosis(session: Session, queue: str | None, grace_s: float) -> list[ServedModel]:
    """The diagnosis models some live worker of this deployment serves, one row per
    name and version (the one seen last), newest version of each name first."""
    rows = session.scalars(
        select(ServedModel)
        .where(ServedModel.role == DIAGNOSIS, _of_queue(queue))
        .order_by(ServedModel.last_seen_at)
    )
    found: dict[tuple[str, str], ServedModel] = {}
    for row in rows:
        if is_active(row, grace_s):
            found[(row.name, row.version)] = row
    return sorted(found.values(), key=lambda r: (r.name, _version_key(r.version)), reverse=True)


def spec(name: str, version: str) -> str:
    return f"{name}@{version}"


class ModelNotServed(LookupError):
    """``wanted`` names no model a live worker serves; ``served`` lists those that are."""

    def __init__(self, wanted: str, served: list[str]) -> None:
        super().__init__(wanted)
        self.wanted = wanted
        self.served = served


def _match(active: list[ServedModel], wanted: str) -> ServedModel | None:
    name, at, version = wanted.strip().partition("@")
    if at and not version:
        return None  # "name@" names no version
    # ``active`` lists each name's newest version first: a name alone takes that one.
    for row in active:
        if row.name == name and (not version or row.version == version):
            return row
    return None


def default_of(active: list[ServedModel], default_model: str = "") -> ServedModel | None:
    """The deployment's default: ``TUSSIS_DEFAULT_MODEL`` where it is served, else the
    first bundle of a worker (``TUSSIS_MODEL_BUNDLES``), the one served longest where
    workers differ, else the first served. Longest, not newest: a new version's workers
    do not take the default from the old one until the old one's are retired, and a
    worker added for one model alone (first in its own list) does not take it either."""
    if default_model:
        return _match(active, default_model)
    marked = [r for r in active if r.is_default]
    if marked:
        return min(marked, key=lambda r: (r.first_seen_at, r.name, r.version))
    return active[0] if active else None


def resolve(
    session: Session, wanted: str | None, *, queue: str | None, grace_s: float, default: str = ""
) -> tuple[str, str] | None:
    """The (name, version) a new job or batch is pinned to, from the models active now
    (:func:`choose`)."""
    return choose(active_diagnosis(session, queue, grace_s), wanted, default)


def choose(
    active: list[ServedModel], wanted: str | None, default: str = ""
) -> tuple[str, str] | None:
    """The (name, version) of ``active`` (:func:`active_diagnosis`) a new job or batch is
    pinned to: ``wanted`` (``name`` or ``name@version``; a name alone is its newest
    active version), or the default. None only when nothing is served yet and nothing
    was asked for: the job then goes to whichever worker comes first, with that
    worker's default. Raises :class:`ModelNotServed` for a model no live worker serves."""
    served = [spec(r.name, r.version) for r in active]
    if wanted:
        row = _match(active, wanted)
        if row is None:
            raise ModelNotServed(wanted, served)
        return row.name, row.version
    if not active:
        return None
    row = default_of(active, default)
    if row is None:
        raise ModelNotServed(default, served)
    return row.name, row.version
