"""``tussis submit``: resumable bulk upload and waiting for the results, built on
:class:`tussis.connection.Connection` (and behind ``Client.submit_batch``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tussis.connection import PART_MAX_BYTES, Connection, item_key, wait_for_batch
from tussis.describe import describe_batch
from tussis.errors import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    RequestRefused,
    ServerUnreachable,
    UsageProblem,
)
from tussis.files import LocalFile, find_files, hash_files, progress_bar
from tussis.formats import AUDIO_SUFFIXES
from tussis.labels import Labels, labels_from_mapping, read_labels

CREATE_RETRIES = 3  # a batch creation whose connection broke is sent again this often
IN_USE_PATIENCE_S = 900.0  # how long to wait for the server to finish our first try

# --- state file ----------------------------------------------------------------------


def default_state_path(paths: Sequence[Path], server: str, cwd: Path | None = None) -> Path:
    key = "\n".join(sorted(str(p.resolve()) for p in paths)) + "\n" + server.rstrip("/")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (cwd or Path.cwd()) / f".tussis-submit-{digest}.json"


@dataclass
class SubmitState:
    """``batch_id`` is empty while the batch is being created: the state then keeps the
    ``Idempotency-Key`` of that creation and the files of its first part, so that a rerun
    sends the very same request and gets the batch back if the server did create it."""

    path: Path
    server: str
    batch_id: str
    paths: list[str] = field(default_factory=list)
    created_at: str = ""
    closed: bool = False
    rejected: list[dict[str, Any]] = field(default_factory=list)
    idempotency_key: str = ""
    first_part: list[list[str]] = field(default_factory=list)  # [[rel, sha256], ...]
    labels_sha256: str = ""  # the --labels file the uploads so far were labelled from

    @classmethod
    def load(cls, path: Path) -> SubmitState | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"cannot read the state file {path}: {exc}") from exc
        if (
            not isinstance(data, dict)
            or not (data.get("batch_id") or data.get("idempotency_key"))
            or not data.get("server")
        ):
            raise UsageProblem(f"{path} is not a tussis submit state file")
        return cls(
            path=path,
            server=str(data["server"]),
            batch_id=str(data["batch_id"]),
            paths=list(data.get("paths") or []),
            created_at=str(data.get("created_at") or ""),
            closed=bool(data.get("closed")),
            rejected=list(data.get("rejected") or []),
            idempotency_key=str(data.get("idempotency_key") or ""),
            first_part=[[str(x) for x in pair] for pair in data.get("first_part") or []],
            labels_sha256=str(data.get("labels_sha256") or ""),
        )

    def save(self) -> None:
        data = {
            "format": 1,
            "server": self.server,
            "batch_id": self.batch_id,
            "paths": self.paths,
            "created_at": self.created_at,
            "closed": self.closed,
            "rejected": self.rejected,
            "idempotency_key": self.idempotency_key,
            "first_part": self.first_part,
            "labels_sha256": self.labels_sha256,
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@contextmanager
def deferred_sigint(log: Callable[[str], None]) -> Iterator[None]:
    """Hold a first Ctrl-C until the block ends (a second one interrupts at once), so a
    batch the server created is always written to the state file."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if pending:
            raise KeyboardInterrupt
        pending.append(signum)
        log("finishing the request that creates the batch; Ctrl-C again to abort now")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


# --- submit --------------------------------------------------------------------------


@dataclass
class SubmitOptions:
    paths: list[Path]
    part_size: int = 100
    state_path: Path | None = None
    wait: bool = False
    out: Path | None = None
    callback_url: str | None = None
    progress: bool | None = None
    part_max_bytes: int = PART_MAX_BYTES
    labels: Path | None = None  # CSV path,label[,group] (tussis/labels.py)
    label_map: dict[str, str] | None = None  # or {item path: label} (the library's)
    group_map: dict[str, str] | None = None  # and {item path: group}
    model: str | None = None  # name or name@version; None: the server's default


@dataclass
class SubmitReport:
    server: str
    files: int = 0
    batch_id: str | None = None
    resumed: bool = False
    accepted: int = 0  # our files the batch holds now
    uploaded: int = 0  # accepted by the server during this run
    already_on_server: int = 0  # found in the batch when resuming, so not sent again
    duplicates: int = 0
    labelled: int = 0  # accepted files that the --labels file labels
    rejected: list[dict[str, Any]] = field(default_factory=list)
    batch: dict[str, Any] | None = None
    waited: bool = False
    failed_items: list[dict[str, Any]] = field(default_factory=list)
    csv: str | None = None

    @property
    def exit_code(self) -> int:
        if self.rejected:
            return EXIT_INCOMPLETE
        if self.waited and self.batch and int((self.batch.get("counts") or {}).get("failed", 0)):
            return EXIT_INCOMPLETE
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        batch = self.batch or {}
        return {
            "batch_id": self.batch_id,
            "server": self.server,
            "files": self.files,
            "accepted": self.accepted,
            "uploaded": self.uploaded,
            "already_on_server": self.already_on_server,
            "duplicates": self.duplicates,
            "labelled": self.labelled,
            "rejected": [
                {k: r[k] for k in ("path", "sha256", "error") if k in r} for r in self.rejected
            ],
            "resumed": self.resumed,
            "waited": self.waited,
            "status": batch.get("status"),
            "total": batch.get("total"),
            "counts": batch.get("counts"),
            "batch": self.batch,
            "failed_items": self.failed_items,
            "csv": self.csv,
            "exit_code": self.exit_code,
        }

    def summary(self) -> str:
        lines = [f"batch {self.batch_id} on {self.server}"]
        head = f"  {self.accepted} of {self.files} files accepted"
        if self.already_on_server:
            head += f" ({self.already_on_server} already on the server from an earlier run)"
        lines.append(head)
        lines.append(f"  {len(self.rejected)} rejected, {self.duplicates} duplicates")
        if self.labelled:
            lines.append(
                f"  {self.labelled} labelled; once the batch has finished, "
                f"`tussis results {self.batch_id} --evaluation` shows how the model did on them"
            )
        for r in self.rejected:
            error = r.get("error") or {}
            lines.append(f"    {r.get('path')}: {error.get('code')}: {error.get('message')}")
        if self.batch:
            lines.extend("  " + line for line in describe_batch(self.batch).splitlines())
        if self.failed_items:
            lines.append(f"  {len(self.failed_items)} failed items:")
            for item in self.failed_items[:50]:
                error = item.get("error") or {}
                lines.append(f"    {item.get('path')}: {error.get('code')}: {error.get('message')}")
            if len(self.failed_items) > 50:
                lines.append(f"    ... and {len(self.failed_items) - 50} more (see the CSV)")
        if self.csv:
            lines.append(f"  results written to {self.csv}")
        return "\n".join(lines)


def split_parts(
    files: Sequence[LocalFile], part_size: int, max_bytes: int
) -> list[list[LocalFile]]:
    parts: list[list[LocalFile]] = []
    current: list[LocalFile] = []
    size = 0
    for f in files:
        if current and (len(current) >= part_size or size + f.size > max_bytes):
            parts.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    if current:
        parts.append(current)
    return parts


class Submitter:
    def __init__(
        self, client: Connection, options: SubmitOptions, log: Callable[[str], None] | None = None
    ) -> None:
        self.client = client
        self.options = options
        self.log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
        self.report = SubmitReport(server=client.server)
        self.state: SubmitState | None = None
        self.labels: Labels | None = None

    # -- steps --

    def _local_files(self) -> list[LocalFile]:
        found = find_files(self.options.paths)
        if not found:
            raise UsageProblem(
                "no audio files found (extensions: " + " ".join(sorted(AUDIO_SUFFIXES)) + ")"
            )
        if self.labels is not None:
            self.labels.check_covers(f.rel for f in found)  # before hashing, let alone sending
        hashed = hash_files(found, self.options.progress)
        unique: dict[tuple[str, str], LocalFile] = {}
        by_rel: dict[str, str] = {}
        for f in hashed:
            if f.key in unique:
                continue  # the same file reached through two arguments
            if by_rel.setdefault(f.rel, f.sha256) != f.sha256:
                self.log(f"warning: different files share the path {f.rel} in this batch")
            unique[f.key] = f
        return list(unique.values())

    def _record_rejections(self, answer: dict[str, Any], part: Sequence[LocalFile]) -> None:
        shas = {f.rel: f.sha256 for f in part}
        for r in answer.get("rejected") or []:
            entry = {"path": r.get("path"), "sha256": shas.get(r.get("path"), ""), **r}
            entry["error"] = r.get("error") or {}
            self.report.rejected.append(entry)

    def _save_state(self) -> None:
        if self.state is not None:
            self.state.rejected = self.report.rejected
            self.state.save()

    def _part_labels(self, part: Sequence[LocalFile]) -> bytes | None:
        """The labels CSV sent with a part: its own files' labels only, so a resumed
        submit never sends labels for files the server already has."""
        return self.labels.part_csv([f.rel for f in part]) if self.labels is not None else None

    def _send(self, part: list[LocalFile], bar: tqdm) -> None:
        """Send one part (create the batch with it if there is none yet); a part that the
        server finds too large as a whole is split in two."""
        sent = 0

        def on_bytes(n: int) -> None:
            nonlocal sent
            sent += n
            bar.update(n)

        try:
            if self.report.batch_id is None:
                with deferred_sigint(self.log):
                    answer = self._create(part, on_bytes)
                    self.report.batch_id = answer["id"]
                    assert self.state is not None
                    self.state.batch_id = answer["id"]
                    self.state.first_part = []
                    self._save_state()
                self.log(f"created batch {answer['id']}")
                if answer.get("replayed"):
                    self._after_replay(part, answer, bar)
                    return
            else:
                answer = self.client.add_items(
                    self.report.batch_id, part, on_bytes=on_bytes, labels=self._part_labels(part)
                )
        except RequestRefused as exc:
            if exc.status != 413:
                raise
            bar.update(-sent)
            if len(part) > 1:
                half = len(part) // 2
                self._send(part[:half], bar)
                self._send(part[half:], bar)
                return
            # One file alone is too large for a request: the server never saw it.
            f = part[0]
            bar.update(f.size)
            self.report.rejected.append(
                {
                    "path": f.rel,
                    "sha256": f.sha256,
                    "error": {"code": exc.code, "message": exc.api_message},
                }
            )
            self._save_state()
            return
        self.report.uploaded += int(answer.get("accepted", 0))
        self.report.duplicates += int(answer.get("duplicates", 0))
        self.report.batch = {
            k: v for k, v in answer.items() if k not in ("accepted", "duplicates", "rejected")
        }
        self._record_rejections(answer, part)
        self._save_state()

    def _create(self, part: list[LocalFile], on_bytes: Callable[[int], None]) -> dict[str, Any]:
        """Create the batch with its first part under one ``Idempotency-Key``, saved in the
        state file before the request leaves: a retry here, or a rerun after a crash,
        sends the same key, so a request whose answer was lost never makes a second batch."""
        state = self.state
        fresh = state is None or bool(state.batch_id) or not state.idempotency_key
        if fresh:
            state = SubmitState(
                path=self._state_path(),
                server=self.client.server,
                batch_id="",
                paths=[str(p.resolve()) for p in self.options.paths],
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                idempotency_key=str(uuid.uuid4()),
            )
        assert state is not None
        state.first_part = [[f.rel, f.sha256] for f in part]
        state.labels_sha256 = self.labels.sha256 if self.labels is not None else ""
        self.state = state
        self._save_state()
        reached = not fresh  # an earlier run may have reached the server with this key
        started, attempt = time.monotonic(), 0
        while True:
            attempt_bytes = 0

            def counted(n: int) -> None:
                nonlocal attempt_bytes
                attempt_bytes += n
                on_bytes(n)

            try:
                return self.client.create_batch(
                    part,
                    keep_open=True,
                    callback_url=self.options.callback_url,
                    on_bytes=counted,
                    idempotency_key=state.idempotency_key,
                    labels=self._part_labels(part),
                    model=self.options.model,
                )
            except (ServerUnreachable, RequestRefused) as exc:
                in_use = isinstance(exc, RequestRefused) and exc.code == "idempotency_key_in_use"
                reached = reached or attempt_bytes > 0 or isinstance(exc, RequestRefused)
                attempt += 1
                give_up = (
                    time.monotonic() - started > IN_USE_PATIENCE_S
                    if in_use
                    else isinstance(exc, RequestRefused) or attempt > CREATE_RETRIES
                )
                if give_up:
                    if not in_use and (isinstance(exc, RequestRefused) or not reached):
                        # Refused, or never sent: no batch exists, nothing to resume.
                        state.remove()
                        self.state = None
                    raise
                on_bytes(-attempt_bytes)
                delay = float(min(2 ** (attempt - 1), 30))
                self.log(
                    f"{'the server is still creating the batch' if in_use else exc.message}; "
                    f"sending the same request again in {delay:.0f} s "
                    f"(Idempotency-Key {state.idempotency_key})"
                )
                time.sleep(delay)

    def _after_replay(self, part: list[LocalFile], answer: dict[str, Any], bar: tqdm) -> None:
        """The server answered a retried creation with the batch an earlier try created:
        the answer has no per-file report, so ask the batch what it holds and send the
        rest of the part again for the server's verdict (rejections are not stored)."""
        assert self.report.batch_id is not None
        have = {item_key(item) for item in self.client.iter_items(self.report.batch_id)}
        self.report.uploaded += sum(1 for f in part if f.key in have)
        self.report.batch = {k: v for k, v in answer.items() if k != "replayed"}
        self._save_state()
        missing = [f for f in part if f.key not in have]
        if missing:
            bar.update(-sum(f.size for f in missing))
            self._send(missing, bar)

    def _pending_parts(self, todo: list[LocalFile]) -> list[list[LocalFile]]:
        """Parts to send; when resuming an interrupted creation, its first part first and
        exactly as before (the same request under the same key)."""
        state = self.state
        size, max_bytes = self.options.part_size, self.options.part_max_bytes
        if state is None or state.batch_id or not state.first_part:
            return split_parts(todo, size, max_bytes)
        by_key = {f.key: f for f in todo}
        first = [by_key.get((rel, sha)) for rel, sha in state.first_part]
        if not all(first):
            self.log("the files of the interrupted batch creation changed; starting afresh")
            state.idempotency_key = ""
            return split_parts(todo, size, max_bytes)
        if state.labels_sha256 != self._labels_sha256():
            # Its labels are part of the request: the same key with other labels is refused.
            self.log("the labels of the interrupted batch creation changed; starting afresh")
            state.idempotency_key = ""
            return split_parts(todo, size, max_bytes)
        chosen = {f.key for f in first if f is not None}
        rest = [f for f in todo if f.key not in chosen]
        return [[f for f in first if f is not None], *split_parts(rest, size, max_bytes)]

    def _labels_sha256(self) -> str:
        return self.labels.sha256 if self.labels is not None else ""

    def _state_path(self) -> Path:
        return self.options.state_path or default_state_path(self.options.paths, self.client.server)

    def _resume(self, files: list[LocalFile]) -> tuple[list[LocalFile], bool]:
        """Files still to send and whether the batch is still open, from the state file."""
        state = SubmitState.load(self._state_path())
        if state is None:
            return files, True
        if state.server.rstrip("/") != self.client.server:
            raise UsageProblem(
                f"the state file {state.path} belongs to {state.server}, not "
                f"{self.client.server}; remove it or pass another --state"
            )
        if not state.batch_id:
            self.state = state
            self.log(
                f"resuming an interrupted batch creation (Idempotency-Key "
                f"{state.idempotency_key}); a batch it created is reused"
            )
            return files, True
        try:
            batch, _ = self.client.get_batch(state.batch_id)
        except RequestRefused as exc:
            if exc.status != 404:
                raise
            self.log(
                f"batch {state.batch_id} from {state.path} is not on the server any more; "
                "starting a new batch"
            )
            state.remove()
            return files, True
        self.state = state
        self.report.batch_id = state.batch_id
        self.report.resumed = True
        self.report.batch = batch
        have = {item_key(item) for item in self.client.iter_items(state.batch_id)}
        local = {f.key for f in files}
        # Rejections are the server's verdict on these very bytes: not sent again.
        self.report.rejected = [
            r for r in state.rejected if (r.get("path"), r.get("sha256")) in local
        ]
        rejected = {(r.get("path"), r.get("sha256")) for r in self.report.rejected}
        todo = [f for f in files if f.key not in have and f.key not in rejected]
        self.report.already_on_server = sum(1 for f in files if f.key in have)
        is_open = batch.get("status") == "open"
        if self.report.already_on_server and state.labels_sha256 != self._labels_sha256():
            self.log(
                "warning: the labels differ from the earlier run's; the files already on the "
                "server keep the labels they were sent with, only the files still to upload "
                "get these"
            )
        state.labels_sha256 = self._labels_sha256()
        self.log(
            f"resuming batch {state.batch_id} ({batch.get('status')}): "
            f"{self.report.already_on_server} files already on the server"
            + (f", {len(todo)} to upload" if is_open else "")
        )
        if not is_open and todo:
            for f in todo:
                self.report.rejected.append(
                    {
                        "path": f.rel,
                        "sha256": f.sha256,
                        "error": {
                            "code": "batch_closed",
                            "message": f"Batch {state.batch_id} was closed without this "
                            "file; remove the state file to submit it in a new batch.",
                        },
                    }
                )
            todo = []
        return todo, is_open

    def _upload(self, todo: list[LocalFile]) -> None:
        parts = self._pending_parts(todo)
        with progress_bar(
            self.options.progress,
            total=sum(f.size for f in todo),
            unit="B",
            unit_scale=True,
            desc="uploading",
            dynamic_ncols=True,
        ) as bar:
            for number, part in enumerate(parts, 1):
                bar.set_postfix_str(f"part {number}/{len(parts)}, {len(part)} files")
                self._send(part, bar)

    def _close(self) -> None:
        assert self.report.batch_id is not None
        try:
            self.report.batch = self.client.close_batch(self.report.batch_id)
        except RequestRefused as exc:
            if exc.code != "batch_closed":
                raise
            self.report.batch, _ = self.client.get_batch(self.report.batch_id)
        if self.state is not None:
            self.state.closed = True
            self._save_state()

    def run(self) -> SubmitReport:
        opts = self.options
        if opts.part_size < 1:
            raise UsageProblem("--part-size must be at least 1")
        # Fail before uploading anything rather than after.
        for what, target in (("state file", self._state_path()), ("CSV", opts.out)):
            if target is not None and not os.access(target.parent.resolve(), os.W_OK):
                raise UsageProblem(
                    f"cannot write the {what} {target}: its folder is missing or not writable"
                )
        if opts.labels is not None:
            self.labels = read_labels(opts.labels)  # a malformed file stops us here
        elif opts.label_map is not None:
            self.labels = labels_from_mapping(opts.label_map, opts.group_map)
        elif opts.group_map:
            raise UsageProblem("groups need labels: pass labels={path: label} as well")
        files = self._local_files()
        self.report.files = len(files)
        todo, is_open = self._resume(files)
        if is_open:
            self._upload(todo)
            if self.report.batch_id is None:
                # Every file was turned away before a batch could be created.
                self.report.accepted = 0
                return self.report
            self._close()
        self.report.accepted = self.report.already_on_server + self.report.uploaded
        if self.labels is not None:
            refused = {(r.get("path"), r.get("sha256")) for r in self.report.rejected}
            self.report.labelled = sum(
                1 for f in files if f.rel in self.labels.by_path and f.key not in refused
            )
        if opts.wait or opts.out:
            assert self.report.batch_id is not None
            self.report.batch = wait_for_batch(
                self.client, self.report.batch_id, progress=opts.progress
            )
            self.report.waited = True
            if int((self.report.batch.get("counts") or {}).get("failed", 0)):
                self.report.failed_items = [
                    {"path": it.get("path"), "job_id": it.get("id"), "error": it.get("error")}
                    for it in self.client.iter_items(self.report.batch_id)
                    if it.get("status") == "failed"
                ]
            if opts.out:
                self.client.write_results(self.report.batch_id, opts.out)
                self.report.csv = str(opts.out)
        if self.state is not None:
            self.state.remove()
        return self.report
