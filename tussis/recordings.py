"""Long recordings from the client's side: resumable uploads (tus, with ``tuspy``) and
the typed :class:`Recording` with its result and events (docs/long-recordings.md).

``Client.submit_recording(path)`` uploads a file of hours in chunks: an interrupted
upload (a dropped connection, a killed process) resumes where it stopped, without
sending the arrived bytes again: the upload's URL is kept in a small state file by
the file's fingerprint, and the server says how much it has (``HEAD``). The bytes go
to ``/api/v1/uploads``; the last chunk turns the upload into a recording.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tussis.connection import Connection, _retry_after
from tussis.errors import RequestRefused, ServerUnreachable, UsageProblem, WaitTimeout
from tussis.files import progress_bar

UPLOADS_PATH = "/api/v1/uploads"
RECORDING_HEADER = "Tussis-Recording"
CHUNK_BYTES = 16 * 1024 * 1024  # one PATCH: the most a broken connection costs again
STATE_FILE = ".tussis-uploads.json"  # tuspy's record of unfinished uploads, by fingerprint
DONE = frozenset({"succeeded", "failed"})
POLL_S = 2.0


@dataclass(frozen=True)
class CoughEvent:
    """One cough: seconds from the start of the recording, and the detector's score."""

    start_s: float
    end_s: float
    score: float


@dataclass(frozen=True)
class RecordingResult:
    cough_count: int
    episodes: int
    coughs_per_hour: float | None = None
    episodes_per_hour: float | None = None
    duration_s: float | None = None
    hourly: list[dict[str, Any]] = field(default_factory=list)
    ten_minutes: list[dict[str, Any]] = field(default_factory=list)
    detector: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> RecordingResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Recording:
    """A long recording counted for coughs. ``wait()`` polls until it is done;
    ``events()`` iterates over every cough; ``timeline_png()`` is the figure."""

    id: str
    status: str  # queued, running, succeeded or failed
    label: str | None = None
    recorded_at: str | None = None
    duration_s: float | None = None
    segments_done: int = 0
    segments_total: int = 0
    result: RecordingResult | None = None
    error: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _client: Connection | None = field(default=None, repr=False, compare=False)
    _retry_after: float | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_api(
        cls,
        data: Mapping[str, Any],
        client: Connection | None = None,
        retry_after: float | None = None,
    ) -> Recording:
        progress = data.get("progress") or {}
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            label=data.get("label"),
            recorded_at=data.get("recorded_at"),
            duration_s=(data.get("audio") or {}).get("duration_s"),
            segments_done=int(progress.get("segments_done") or 0),
            segments_total=int(progress.get("segments_total") or 0),
            result=RecordingResult.from_api(data["result"]) if data.get("result") else None,
            error=data.get("error"),
            raw=dict(data),
            _client=client,
            _retry_after=retry_after,
        )

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def url(self) -> str:
        return f"/api/v1/recordings/{self.id}"

    def _owner(self) -> Connection:
        if self._client is None:
            raise RuntimeError("this Recording was not made by a Client")
        return self._client

    def reload(self) -> Recording:
        response = self._owner().request("GET", self.url, policy="poll")
        fresh = Recording.from_api(response.json(), self._client, _retry_after(response))
        for f in fields(self):
            if f.name != "_client":
                setattr(self, f.name, getattr(fresh, f.name))
        return self

    def wait(self, timeout: float | None = None, poll: float | None = None) -> Recording:
        """Poll until the recording has succeeded or failed; returns it. Raises
        :class:`~tussis.errors.WaitTimeout` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            delay = poll if poll is not None else (self._retry_after or POLL_S)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(
                        f"recording {self.id} is still {self.status} after {timeout:g} s", self.id
                    )
                delay = min(delay, left)
            time.sleep(delay)
            self.reload()
        return self

    def events(self, page_size: int = 200) -> Iterator[CoughEvent]:
        """Every cough of a counted recording, in time order, page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self._owner().request("GET", f"{self.url}/events", params=params).json()
            for event in page["events"]:
                yield CoughEvent(event["start_s"], event["end_s"], event["score"])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def write_events_csv(self, out: str | os.PathLike[str]) -> Path:
        """The server's events CSV, saved to ``out``."""
        response = self._owner().request("GET", f"{self.url}/events.csv")
        path = Path(out)
        path.write_bytes(response.content)
        return path

    def timeline_png(self) -> bytes:
        """Coughs per 10 minutes and per hour, as a PNG."""
        return bytes(self._owner().request("GET", f"{self.url}/timeline.png").content)

    def clip(self, start_s: float, end_s: float) -> bytes:
        """A span of the recording (at most 60 s) as 16 kHz WAV, to check it by ear."""
        params = {"start_s": start_s, "end_s": end_s}
        return bytes(self._owner().request("GET", f"{self.url}/audio", params=params).content)


def upload(
    connection: Connection,
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    recorded_at: str | None = None,
    progress: bool | None = True,
    state_path: str | os.PathLike[str] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> str:
    """Upload ``path`` resumably; returns the recording's id. An upload of the same file
    left unfinished (its URL in ``state_path``, default ``.tussis-uploads.json`` here)
    resumes from the offset the server reports."""
    from tusclient import client as tus_client
    from tusclient.exceptions import TusCommunicationError, TusUploadFailed
    from tusclient.storage.filestorage import FileStorage

    source = Path(path)
    if not source.is_file():
        raise UsageProblem(f"cannot read {source}: no such file")
    metadata = {"filename": source.name}
    if label:
        metadata["label"] = label
    if recorded_at:
        metadata["recorded_at"] = recorded_at
    tus = tus_client.TusClient(
        f"{connection.server}{UPLOADS_PATH}",
        headers={
            k: v if isinstance(v, str) else v.decode()
            for k, v in connection.session.headers.items()
        },
    )
    storage = FileStorage(str(Path(state_path) if state_path else Path.cwd() / STATE_FILE))
    size = source.stat().st_size
    try:
        uploader = tus.uploader(
            str(source),
            chunk_size=chunk_bytes,
            metadata=metadata,
            store_url=True,
            url_storage=storage,
            retries=5,
            retry_delay=2,
        )
        with progress_bar(
            progress, total=size, initial=uploader.offset, unit="B", unit_scale=True,
            desc=source.name,
        ) as bar:  # fmt: skip
            if not uploader.url:
                uploader.set_url(uploader.create_url())
                uploader.offset = 0
            while uploader.offset < size:
                before = uploader.offset
                uploader.upload_chunk()
                bar.update(uploader.offset - before)
        answer = connection.request("GET", str(uploader.url))
        recording = answer.headers.get(RECORDING_HEADER) or answer.json().get("recording")
        if not recording:
            raise RequestRefused(
                answer.status_code,
                "upload_unfinished",
                "the server did not turn the upload into a recording",
            )
        # Done: the next upload of this file is a new recording, not a resume.
        storage.remove_item(uploader._get_fingerprint())
    except (TusCommunicationError, TusUploadFailed) as exc:
        raise _refused(exc) from exc
    finally:
        storage.close()
    return str(recording).rstrip("/").rsplit("/", 1)[-1]


def _refused(exc: Any) -> Exception:
    """tuspy's error as the client's: the server's code and message when it answered."""
    if exc.status_code is None:
        return ServerUnreachable(f"the upload could not reach the server: {exc}")
    content = exc.response_content or b""
    try:
        error = json.loads(content)["error"]
        return RequestRefused(exc.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return RequestRefused(exc.status_code, "upload_failed", str(exc))


def summary(recording: Recording) -> str:
    """One line about a recording, for people."""
    name = recording.label or recording.raw.get("audio", {}).get("filename") or recording.id
    if recording.status == "succeeded" and recording.result is not None:
        r = recording.result
        hours = (r.duration_s or 0) / 3600
        return (
            f"{name}: {r.cough_count} coughs in {r.episodes} episodes over {hours:.2f} h "
            f"({r.coughs_per_hour} coughs/h); recording {recording.id}"
        )
    if recording.status == "failed":
        error = recording.error or {}
        return f"{name}: failed ({error.get('code')}): {error.get('message')}"
    return (
        f"{name}: {recording.status}, {recording.segments_done}/{recording.segments_total} "
        f"segments; recording {recording.id}"
    )
