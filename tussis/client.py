"""The Python client of the Tussis API: ``from tussis import Client`` (docs/client.md).

:class:`Client` answers typed objects (:mod:`tussis.resources`): ``client.submit(path)``
gives a :class:`~tussis.resources.Job` to ``wait()`` on, ``client.submit_batch(paths)``
a :class:`~tussis.resources.Batch`, uploaded as resumably as ``tussis submit`` (the
same :mod:`tussis.submit` machinery). The ``tussis`` command is built on it. HTTP,
retries included, is :mod:`tussis.connection`'s.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from tussis.connection import (
    IDEMPOTENCY_HEADER,
    UPLOAD_READ_TIMEOUT_S,
    Connection,
    _retry_after,
)
from tussis.errors import RequestRefused, UsageProblem
from tussis.recordings import CHUNK_BYTES, Recording
from tussis.recordings import upload as upload_recording
from tussis.resources import Batch, Health, Job, Model
from tussis.submit import SubmitOptions, SubmitReport, Submitter


def _read_bytes(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {source}: {exc.strerror or exc}") from exc


class Client(Connection):
    """One Tussis server (see :class:`~tussis.connection.Connection` for ``base_url``,
    ``api_key`` and ``timeout``), answering typed objects."""

    def submit(
        self,
        audio: str | os.PathLike[str] | bytes,
        filename: str | None = None,
        *,
        model: str | None = None,
    ) -> Job:
        """Submit one recording (a path, or its bytes) as a job; returns at once with the
        queued :class:`Job` (``job.wait()`` for its result). ``model`` (``name`` or
        ``name@version``, as :meth:`models` lists them) chooses the model; None: the
        server's default. A recording the API finds unusable is refused here
        (:class:`RequestRefused` with its ``code``, e.g. ``audio_too_short``; a model no
        worker serves: ``model_not_served``). Sent with an Idempotency-Key, so a retry
        after a lost answer never makes a second job."""
        data = _read_bytes(audio)
        if filename is None:
            filename = "recording" if isinstance(audio, bytes | bytearray) else Path(audio).name
        response = self.request(
            "POST",
            "/api/v1/jobs",
            files={"audio": (filename, data)},
            data={"model": model} if model else None,
            headers={IDEMPOTENCY_HEADER: str(uuid.uuid4())},
            read_timeout=UPLOAD_READ_TIMEOUT_S,
        )
        return Job.from_api(response.json(), self, _retry_after(response))

    def job(self, job_id: str) -> Job:
        """The job ``job_id`` as it is now."""
        data, retry_after = self.get_job_data(job_id)
        return Job.from_api(data, self, retry_after)

    def delete_job(self, job_id: str) -> None:
        self.request("DELETE", f"/api/v1/jobs/{job_id}")

    # -- batches --

    def submit_batch(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        labels: str | os.PathLike[str] | Mapping[str, str] | None = None,
        groups: Mapping[str, str] | None = None,
        progress: bool | None = True,
        *,
        part_size: int = 100,
        state_path: str | os.PathLike[str] | None = None,
        callback_url: str | None = None,
        model: str | None = None,
    ) -> Batch:
        """Upload recordings (files, and folders searched for audio files) as one batch
        and close it; returns the :class:`Batch` (``batch.wait()`` for the results).

        ``labels`` labels the files by their item paths (a folder's files by their path
        relative to it, a file by its name): a labels CSV ``path,label[,group]`` as for
        ``tussis submit --labels``, or a mapping ``{item path: label}``, with ``groups``
        an optional mapping ``{item path: group}``. Labels are checked before anything is
        sent. Resumable: an interrupted call leaves a state file
        (``.tussis-submit-<hash>.json`` here, or ``state_path``), and the same call again
        uploads only what the server does not have yet. Files the server turned away are
        in ``batch.rejected``. ``model`` (``name`` or ``name@version``) scores every item
        with that model; None: the server's default."""
        report = self._run_submit(
            SubmitOptions(
                paths=[
                    Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)
                ],
                part_size=part_size,
                state_path=Path(state_path) if state_path is not None else None,
                callback_url=callback_url,
                progress=progress,
                labels=Path(labels) if isinstance(labels, str | os.PathLike) else None,
                label_map=dict(labels) if isinstance(labels, Mapping) else None,
                group_map=dict(groups) if groups is not None else None,
                model=model,
            ),
        )
        assert report.batch is not None
        return Batch.from_api(report.batch, self, report.rejected)

    def _run_submit(self, options: SubmitOptions) -> SubmitReport:
        report = Submitter(self, options).run()
        if report.batch_id is None:
            reasons = "; ".join(
                f"{r.get('path')}: {(r.get('error') or {}).get('code')}"
                for r in report.rejected[:5]
            )
            raise RequestRefused(422, "all_files_rejected", f"no file was accepted ({reasons})")
        if report.batch is None:
            report.batch, _ = self.get_batch(report.batch_id)
        return report

    def batch(self, batch_id: str) -> Batch:
        """The batch ``batch_id`` as it is now."""
        data, _ = self.get_batch(batch_id)
        return Batch.from_api(data, self)

    def rescore(self, batch_id: str, model: str | None = None) -> Batch:
        """Score a finished batch's stored recordings again with ``model`` (``name`` or
        ``name@version``; None: the server's default), without uploading them: returns the
        new :class:`Batch` (``batch.wait()``), whose ``rescored_from`` is ``batch_id``.
        Refused with ``audio_purged`` once the server's audio retention removed the
        recordings, ``batch_not_finished`` while the batch still runs. Sent with an
        Idempotency-Key, so a retry after a lost answer never makes a second batch."""
        data, _ = self.rescore_batch(batch_id, model, str(uuid.uuid4()))
        return Batch.from_api(data, self)

    # -- long recordings --

    def submit_recording(
        self,
        path: str | os.PathLike[str],
        *,
        label: str | None = None,
        recorded_at: str | None = None,
        progress: bool | None = True,
        state_path: str | os.PathLike[str] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> Recording:
        """Upload a long recording (hours) resumably and have its coughs counted; returns
        the queued :class:`Recording` (``recording.wait()``, then ``recording.result``
        and ``recording.events()``). ``recorded_at`` (ISO 8601 with its offset) makes the
        hourly counts clock hours. Run again after an interruption, the upload resumes
        where it stopped (``state_path`` keeps its URL; default ``.tussis-uploads.json``
        in the working directory)."""
        recording_id = upload_recording(
            self,
            path,
            label=label,
            recorded_at=recorded_at,
            progress=progress,
            state_path=state_path,
            chunk_bytes=chunk_bytes,
        )
        return self.recording(recording_id)

    def recording(self, recording_id: str) -> Recording:
        """The recording ``recording_id`` as it is now."""
        response = self.request("GET", f"/api/v1/recordings/{recording_id}")
        return Recording.from_api(response.json(), self, _retry_after(response))

    def delete_recording(self, recording_id: str) -> None:
        self.request("DELETE", f"/api/v1/recordings/{recording_id}")

    # -- the service --

    def models(self) -> list[Model]:
        """The model bundles workers serve (``active``) or have served."""
        answer = self.request("GET", "/api/v1/models").json()
        return [Model.from_api(m) for m in answer.get("models") or []]

    def health(self) -> Health:
        """Whether the service is ready for jobs (``GET /readyz``); a service that is up
        but not ready answers with ``ready=False`` and what is wrong, not an exception.
        A server that cannot be reached raises :class:`ServerUnreachable`."""
        response = self.request("GET", "/readyz", policy="once", ok=(503,))
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") or {}
        return Health(
            ready=response.status_code == 200,
            status=str(body.get("status") or error.get("code") or response.status_code),
            checks=dict(body.get("checks") or {}),
            message=error.get("message"),
        )

    # -- the batch endpoints (tussis.submit's building blocks) --
