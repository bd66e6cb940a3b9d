"""The JSON a client sees for a job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.models import Job, JobStatus


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_url(job_id: str) -> str:
    return f"/api/v1/jobs/{job_id}"


def job_to_dict(job: Job) -> dict[str, Any]:
    result = None
    if job.status == JobStatus.SUCCEEDED:
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
        }
    error = None
    if job.status == JobStatus.FAILED:
        error = {"code": job.error_code, "message": job.error_message}
        if job.cough_detected is not None:
            error.update(cough_detected=job.cough_detected, cough_score=job.cough_score)
    return {
        "id": job.id,
        "status": job.status,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
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
        "links": {"self": job_url(job.id), "spectrogram": f"{job_url(job.id)}/spectrogram.png"},
    }
