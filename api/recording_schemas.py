"""The JSON bodies of ``/api/v1/recordings`` (long recordings), as pydantic models
beside the jobs' and batches' (api/schemas.py): the OpenAPI document and every answer
are built from them."""

from __future__ import annotations

from pydantic import Field

from api.schemas import Body, NextCursor, Timestamp
from shared.tables import JobStatus


class RecordingAudio(Body):
    filename: str | None
    content_type: str | None
    size_bytes: int
    sha256: str
    duration_s: float | None = Field(description="Known once the recording is decoded.")


class RecordingProgress(Body):
    segments_done: int
    segments_total: int = Field(description="0 until the recording is decoded.")
    fraction: float = Field(ge=0, le=1)


class CountBin(Body):
    start_s: float = Field(
        description="Seconds from the recording's start (negative for a clock hour that began "
        "before it)."
    )
    start: Timestamp | None = Field(
        default=None, description="The bin's clock time, when `recorded_at` was given."
    )
    count: int = Field(description="Cough events that started in the bin.")
    covered_s: float = Field(description="Recorded seconds within the bin.")


class Detector(Body):
    name: str | None
    version: str | None
    threshold: float | None = Field(description="The window score at or above which a cough.")


class RecordingResult(Body):
    cough_count: int = Field(description="Cough events over the whole recording.")
    episodes: int = Field(description="Coughs less than 2 s apart form one episode.")
    coughs_per_hour: float | None
    episodes_per_hour: float | None
    duration_s: float
    hourly: list[CountBin] = Field(
        description="Per clock hour when `recorded_at` was given, else per hour from the start."
    )
    ten_minutes: list[CountBin] = Field(description="The same per 10 minutes.")
    detector: Detector


class RecordingError(Body):
    code: str | None
    message: str | None


class RecordingLinks(Body):
    self: str
    events: str
    events_csv: str
    timeline: str
    audio: str


class Recording(Body):
    id: str
    status: JobStatus
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None
    audio_deleted_at: Timestamp | None
    label: str | None
    recorded_at: Timestamp | None
    audio: RecordingAudio
    progress: RecordingProgress
    result: RecordingResult | None
    error: RecordingError | None
    links: RecordingLinks


class RecordingPage(Body):
    recordings: list[Recording]
    next_cursor: NextCursor


class CoughEvent(Body):
    start_s: float = Field(description="Seconds from the start of the recording.")
    end_s: float
    score: float = Field(description="The detector's highest window score within the event.")


class EventPage(Body):
    events: list[CoughEvent]
    next_cursor: NextCursor
