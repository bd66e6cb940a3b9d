"""The JSON a client sees for a job, a batch and a served model: built here from the
rows, and checked against the declared bodies of api/schemas.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from api import schemas
from shared import batches, jobs
from shared.model_registry import ModelNote
from shared.tables import Batch, BatchStatus, JobStatus, ServedModel


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_url(job_id: str) -> str:
    return f"/api/v1/jobs/{job_id}"


ModelNotes = Mapping[tuple[str, str], ModelNote]

# A version's manifest never changes (a rebuilt bundle is a new version), so each
# process keeps the notes it has read: a poll of a succeeded job needs no query for
# them. A model no worker has registered yet is not remembered, and is asked again.
_NOTES: dict[tuple[str, str], ModelNote] = {}


def _scored_by(rows: Iterable[Any]) -> set[tuple[str, str]]:
    return {
        (j.model_id, j.model_version)
        for j in rows
        if j.status == JobStatus.SUCCEEDED and j.model_id and j.model_version
    }


def known_notes(rows: Iterable[Any]) -> dict[tuple[str, str], ModelNote] | None:
    """The notes of the models that scored these jobs from this process's cache, or
    None when one of them has to be read (:func:`model_notes`)."""
    pairs = _scored_by(rows)
    if not pairs <= _NOTES.keys():
        return None
    return {pair: _NOTES[pair] for pair in pairs}


def model_notes(session: Session, rows: Iterable[Any]) -> dict[tuple[str, str], ModelNote]:
    """The notes of the models that scored these jobs: from the cache, and the others
    in one query."""
    rows = list(rows)
    cached = known_notes(rows)
    if cached is not None:
        return cached
    pairs = _scored_by(rows)
    missing = pairs - _NOTES.keys()
    for pair, manifest in jobs.scoring_manifests(session, missing).items():
        _NOTES[pair] = ModelNote.of(manifest)
    return {pair: _NOTES[pair] for pair in pairs if pair in _NOTES}


def forget_notes() -> None:
    """Empty this process's cache of model notes (tests)."""
    _NOTES.clear()


# Part of every ETag: a release that changes how a body is written changes every tag.
REPRESENTATION = "1"


def _tag(*parts: object) -> str:
    text = "|".join("" if p is None else str(p) for p in (REPRESENTATION, *parts))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def job_etag(job: Any, notes: ModelNotes) -> str:
    """A strong ETag of the job's body, from the row's state: every write that changes
    what :func:`job_to_dict` shows moves ``updated_at`` (or sets ``audio_deleted_at``),
    and a result's note is either known or not."""
    note = None
    if job.status == JobStatus.SUCCEEDED:
        note = (job.model_id or "", job.model_version or "") in notes
    return _tag(
        "job", job.id, job.status, job.attempts, iso(job.updated_at), iso(job.audio_deleted_at),
        note,
    )  # fmt: skip


def items_etag(items: Iterable[Any], notes: ModelNotes, next_cursor: str | None) -> str:
    """A strong ETag of a page of items: each item's own, and where the next page starts."""
    return _tag("items", next_cursor, *(job_etag(j, notes) for j in items))


def body_etag(body: Mapping[str, Any]) -> str:
    """A strong ETag of a body built only from stored state (a batch's)."""
    return _tag(json.dumps(body, sort_keys=True, default=str))


def job_to_dict(job: Any, notes: ModelNotes) -> dict[str, Any]:
    """The job's body (from a ``Job`` or a row of its columns, shared/polls.py);
    ``notes`` (from :func:`model_notes`, or ``{}`` for a job that cannot have a result
    yet) gives a result its model's caveat."""
    result = None
    if job.status == JobStatus.SUCCEEDED:
        note = notes.get((job.model_id or "", job.model_version or ""), ModelNote())
        result = {
            "diagnosis": job.diagnosis,
            # The proof of concept's key, kept so its clients keep working.
            "Diagnóstico": job.diagnosis,
            "score": job.score,
            "threshold": job.threshold,
            "model_id": job.model_id,
            "model_version": job.model_version,
            "cough_detected": job.cough_detected,
            "cough_score": job.cough_score,
            "cough_segments": job.cough_segments,
            "caveat": note.caveat,
            "within_source_auc": note.within_source_auc,
        }
    error: dict[str, Any] | None = None
    if job.status == JobStatus.FAILED:
        error = {"code": job.error_code, "message": job.error_message}
        if job.cough_detected is not None:
            error.update(
                cough_detected=job.cough_detected,
                cough_score=job.cough_score,
                cough_segments=job.cough_segments,
            )
    body = {
        "id": job.id,
        "status": job.status,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        # Set once retention deleted the recording and spectrogram; the result stays.
        "audio_deleted_at": iso(job.audio_deleted_at),
        "attempts": job.attempts,
        "audio": {
            "filename": job.filename,
            "content_type": job.content_type,
            "size_bytes": job.size_bytes,
            "sha256": job.audio_sha256,
            "duration_s": job.duration_s,
        },
        "result": result,
        "error": error,
        "batch_id": job.batch_id,
        "path": job.path,
        "label": job.label,
        "group": job.group,
        "model": _pin(job.model_id, job.model_version),
        "links": {"self": job_url(job.id), "spectrogram": f"{job_url(job.id)}/spectrogram.png"},
    }
    return schemas.dump(schemas.Job, body)


def batch_url(batch_id: str) -> str:
    return f"/api/v1/batches/{batch_id}"


def batch_to_dict(session: Session, batch: Batch) -> dict[str, Any]:
    return batch_body(batch, batches.counts(session, batch.id))


def batch_body(batch: Any, c: batches.Counts) -> dict[str, Any]:
    """The batch's body from its row (or a row of its columns) and its items' counts.
    Only stored state goes into it, never the clock: a running batch's ``elapsed_s``
    runs to its latest finished item, so the body, and its ETag, change only when the
    batch or an item does."""
    total = c.total
    progress = c.done / total if total else (1.0 if batch.status == BatchStatus.COMPLETED else 0.0)
    started = batch.created_at
    end = batch.finished_at or c.last_finished_at or started
    elapsed = max(0.0, (end - started).total_seconds())
    eta = None
    if batch.status != BatchStatus.COMPLETED and c.done and c.done < total:
        eta = round(elapsed / c.done * (total - c.done), 1)
    callback = None
    if batch.callback_url:
        callback = {
            "url": batch.callback_url,
            "state": batch.callback_state or "waiting",
            "attempts": batch.callback_attempts,
        }
    url = batch_url(batch.id)
    body = {
        "id": batch.id,
        "status": batch.status,
        "created_at": iso(batch.created_at),
        "closed_at": iso(batch.closed_at),
        "finished_at": iso(batch.finished_at),
        "total": total,
        "counts": c.as_dict(),
        "progress": round(progress, 4),
        "elapsed_s": round(elapsed, 1),
        "eta_s": eta,
        "callback": callback,
        "model": _pin(batch.model_id, batch.model_version),
        "rescored_from": batch.rescored_from,
        "links": {"self": url, "items": f"{url}/items", "results": f"{url}/results.csv"},
    }
    return schemas.dump(schemas.Batch, body)


def _pin(model_id: str | None, version: str | None) -> dict[str, str] | None:
    return {"id": model_id, "version": version} if model_id and version else None


def served_model_to_dict(
    model: ServedModel, *, active: bool, default: bool = False
) -> dict[str, Any]:
    manifest = model.manifest
    body = {
        "id": model.name,
        "version": model.version,
        "role": model.role,
        "fingerprint": model.fingerprint,
        "backbone": manifest.get("backbone", {}).get("name"),
        "labels": manifest.get("labels"),
        "threshold": manifest.get("threshold"),
        "first_seen_at": iso(model.first_seen_at),
        "last_seen_at": iso(model.last_seen_at),
        "card": manifest.get("card", {}),
        "active": active,
        "default": default,
    }
    return schemas.dump(schemas.ServedModel, body)
