"""Client side of the batch API (docs/batches-api.md): an HTTP client and the logic
behind ``tussis submit``, ``tussis status`` and ``tussis results``.

``submit`` is resumable. It keeps a small state file (server + batch id) while a
batch is being uploaded or awaited; a rerun of the same command asks the server
which (path, sha256) pairs the open batch already holds and uploads only the rest,
so nothing the server already has is sent twice. The state file is removed once the
batch is closed (and, when waiting, its results are in).

This module talks HTTP only; it never imports the service's code.
"""

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
from typing import Any, BinaryIO

import requests
from tqdm import tqdm

from shared.audio import AUDIO_SUFFIXES

# Exit codes a script can rely on.
EXIT_OK = 0
EXIT_INCOMPLETE = 1  # some files rejected, or some items failed
EXIT_USAGE = 2  # click's own usage errors
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4  # the server answered with an HTTP error
EXIT_INTERRUPTED = 130

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
UPLOAD_READ_TIMEOUT_S = 900.0  # the API decodes every file of a part before it answers
PART_MAX_BYTES = 256 * 1024 * 1024  # a part also ends here, well below the server's limit
POLL_MIN_S, POLL_MAX_S = 0.5, 10.0
OUTAGE_TOLERANCE_S = 120.0  # while waiting, keep polling through a server restart this long
PAGE_LIMIT = 200
HASH_CHUNK = 1024 * 1024


# --- errors --------------------------------------------------------------------------


class ClientError(Exception):
    """Anything that ends a command with a message and an exit code."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageProblem(ClientError):
    exit_code = EXIT_USAGE


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class ApiError(ClientError):
    """An HTTP error answer, in the API's shape ``{"error": {"code", "message", "status"}}``."""

    exit_code = EXIT_REFUSED

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the server refused the request (HTTP {status} {code}): {message}")
        self.status = status
        self.code = code
        self.api_message = message

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["code"]), str(error["message"]))
        except (ValueError, KeyError, TypeError):
            text = " ".join(response.text.split())[:200] or response.reason or ""
            return cls(response.status_code, "http_error", text)


class FileChanged(ClientError):
    """A file changed between hashing and uploading."""


def _root_cause(exc: BaseException) -> str:
    """The innermost useful reason of a requests connection error, e.g. 'Connection refused'."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    seen: set[int] = set()
    current: BaseException | None = exc
    reason = str(exc)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            reason = current.strerror
        nxt = getattr(current, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = nxt or current.__cause__ or current.__context__
    return reason


# --- local files ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    path: Path  # where it is on disk
    rel: str  # the item's path in the batch (relative to the folder given)
    size: int
    sha256: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.rel, self.sha256)


def find_files(paths: Sequence[Path]) -> list[LocalFile]:
    """Audio files under each folder (relative to it) and each file given (by its name).

    Hidden files and folders (``.name``) are skipped inside folders; a file named on the
    command line is always taken, whatever its extension (the server judges it).
    """
    found: list[LocalFile] = []
    for given in paths:
        if given.is_dir():
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith(".") or Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                        continue
                    full = Path(dirpath) / name
                    if not full.is_file():
                        continue
                    rel = full.relative_to(given).as_posix()
                    found.append(LocalFile(full, rel, full.stat().st_size))
        elif given.is_file():
            found.append(LocalFile(given, given.name, given.stat().st_size))
        else:
            raise UsageProblem(f"{given}: no such file or folder")
    return found


def sha256_file(path: Path, on_bytes: Callable[[int], object] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def hash_files(files: Sequence[LocalFile], progress: bool | None) -> list[LocalFile]:
    with _bar(
        progress, total=sum(f.size for f in files), unit="B", unit_scale=True, desc="hashing"
    ) as bar:
        return [LocalFile(f.path, f.rel, f.size, sha256_file(f.path, bar.update)) for f in files]


def _bar(progress: bool | None, **kwargs: Any) -> tqdm:
    """A progress bar on stderr; ``progress=None`` shows it only on a terminal."""
    return tqdm(file=sys.stderr, disable=None if progress is None else not progress, **kwargs)


# --- multipart body ------------------------------------------------------------------


def _header_param(name: str, value: str) -> str:
    """``name="value"`` as browsers write it (HTML5): UTF-8, with quotes and line breaks
    percent-encoded; the server keeps slashes, so a relative path survives."""
    return f'{name}="{value.translate({10: "%0A", 13: "%0D", 34: "%22"})}"'


class MultipartBody:
    """A streamed ``multipart/form-data`` body with a known length, read file by file
    (never a whole part in memory); ``on_bytes`` counts the file bytes sent."""

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[LocalFile],
        file_field: str = "files",
        on_bytes: Callable[[int], object] | None = None,
    ) -> None:
        self.boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self.on_bytes = on_bytes
        segments: list[bytes | LocalFile] = []
        for name, value in fields:
            segments.append(
                self._head(f"{_header_param('name', name)}", None) + value.encode() + b"\r\n"
            )
        for f in files:
            disposition = f"{_header_param('name', file_field)}; {_header_param('filename', f.rel)}"
            segments.append(self._head(disposition, "application/octet-stream"))
            segments.append(f)
            segments.append(b"\r\n")
        segments.append(f"--{self.boundary}--\r\n".encode())
        self._segments = segments
        self._length = sum(s.size if isinstance(s, LocalFile) else len(s) for s in segments)
        self._index = 0
        self._buffer = b""
        self._fh: BinaryIO | None = None
        self._left = 0
        self._digest: Any = None

    def _head(self, disposition: str, content_type: str | None) -> bytes:
        lines = [f"--{self.boundary}", f"Content-Disposition: form-data; {disposition}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def __len__(self) -> int:
        return self._length

    def _file_chunk(self, size: int) -> bytes:
        current = self._segments[self._index]
        assert isinstance(current, LocalFile)
        if self._fh is None:
            self._fh = open(current.path, "rb")  # noqa: SIM115 - closed at its end
            self._left = current.size
            self._digest = hashlib.sha256()
        chunk = self._fh.read(min(size, self._left)) if self._left else b""
        self._left -= len(chunk)
        self._digest.update(chunk)
        if (not chunk and self._left) or (self._left == 0 and self._fh.read(1)):
            self.close()
            raise FileChanged(f"{current.path} changed while it was being uploaded; run again")
        if self._left == 0:
            self.close()
            if self._digest.hexdigest() != current.sha256:
                raise FileChanged(f"{current.path} changed while it was being uploaded; run again")
            self._index += 1
        if self.on_bytes and chunk:
            self.on_bytes(len(chunk))
        return chunk

    def read(self, size: int = -1) -> bytes:
        size = 64 * 1024 if size is None or size < 0 else size
        while self._index < len(self._segments):
            current = self._segments[self._index]
            if isinstance(current, LocalFile):
                if current.size == 0:
                    self._index += 1
                    continue
                return self._file_chunk(size)
            self._index += 1
            return current
        return b""

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --- HTTP client ---------------------------------------------------------------------


class Client:
    """The batch endpoints of one Tussis server."""

    def __init__(self, server: str, api_key: str | None = None) -> None:
        server = server.strip().rstrip("/")
        if not server.startswith(("http://", "https://")):
            raise UsageProblem(f"--server must be an http(s) URL, not {server!r}")
        self.server = server
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "tussis-cli"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(
        self, method: str, path: str, *, read_timeout: float = READ_TIMEOUT_S, **kwargs: Any
    ) -> requests.Response:
        url = path if path.startswith("http") else f"{self.server}{path}"
        try:
            response = self.session.request(
                method, url, timeout=(CONNECT_TIMEOUT_S, read_timeout), **kwargs
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unreachable(
                f"cannot reach the Tussis server at {self.server}: {_root_cause(exc)}"
            ) from exc
        if response.status_code >= 400:
            error = ApiError.from_response(response)
            response.close()
            raise error
        return response

    def _upload(
        self,
        path: str,
        files: Sequence[LocalFile],
        fields: Sequence[tuple[str, str]] = (),
        on_bytes: Callable[[int], object] | None = None,
    ) -> dict[str, Any]:
        body = MultipartBody(fields, files, on_bytes=on_bytes)
        try:
            return self.request(
                "POST",
                path,
                data=body,
                headers={"Content-Type": body.content_type},
                read_timeout=UPLOAD_READ_TIMEOUT_S,
            ).json()
        finally:
            body.close()

    def create_batch(
        self,
        files: Sequence[LocalFile],
        *,
        keep_open: bool = True,
        callback_url: str | None = None,
        on_bytes: Callable[[int], object] | None = None,
    ) -> dict[str, Any]:
        fields = [("open", "true" if keep_open else "false")]
        if callback_url:
            fields.append(("callback_url", callback_url))
        return self._upload("/api/v1/batches", files, fields, on_bytes)

    def add_items(
        self,
        batch_id: str,
        files: Sequence[LocalFile],
        on_bytes: Callable[[int], object] | None = None,
    ) -> dict[str, Any]:
        return self._upload(f"/api/v1/batches/{batch_id}/items", files, on_bytes=on_bytes)

    def close_batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/batches/{batch_id}/close").json()

    def get_batch(self, batch_id: str) -> tuple[dict[str, Any], float | None]:
        """The batch, and the server's suggested seconds before the next poll."""
        response = self.request("GET", f"/api/v1/batches/{batch_id}")
        try:
            retry_after = float(response.headers.get("Retry-After", ""))
        except ValueError:
            retry_after = None
        return response.json(), retry_after

    def iter_items(self, batch_id: str) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_LIMIT}
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", f"/api/v1/batches/{batch_id}/items", params=params).json()
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def download_results(self, batch_id: str, out: BinaryIO) -> int:
        """Stream the results CSV into ``out``; returns the bytes written."""
        written = 0
        with self.request(
            "GET", f"/api/v1/batches/{batch_id}/results.csv", stream=True
        ) as response:
            try:
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    out.write(chunk)
                    written += len(chunk)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise Unreachable(
                    f"the connection to {self.server} broke while downloading results: "
                    f"{_root_cause(exc)}"
                ) from exc
        return written

    def write_results(self, batch_id: str, out: Path) -> None:
        """Write the results CSV to ``out`` (whole or not at all)."""
        tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as fh:
                self.download_results(batch_id, fh)
            os.replace(tmp, out)
        except OSError as exc:
            raise ClientError(f"cannot write {out}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)


def item_key(item: dict[str, Any]) -> tuple[str, str]:
    audio = item.get("audio") or {}
    return (str(item.get("path")), str(audio.get("sha256") or item.get("sha256")))


def batch_terminal_count(batch: dict[str, Any]) -> int:
    counts = batch.get("counts") or {}
    return int(counts.get("succeeded", 0)) + int(counts.get("failed", 0))


def wait_for_batch(
    client: Client,
    batch_id: str,
    *,
    progress: bool | None,
    log: Callable[[str], None],
    outage_tolerance_s: float = OUTAGE_TOLERANCE_S,
) -> dict[str, Any]:
    """Poll the batch until it is completed, with a progress bar; returns the batch."""
    last_ok = time.monotonic()
    outage_reported = False
    with _bar(progress, total=None, unit="item", desc="analysing", dynamic_ncols=True) as bar:
        while True:
            try:
                batch, retry_after = client.get_batch(batch_id)
            except Unreachable as exc:
                if time.monotonic() - last_ok > outage_tolerance_s:
                    raise
                if not outage_reported:
                    log(f"{exc.message}; retrying for up to {outage_tolerance_s:.0f} s")
                    outage_reported = True
                time.sleep(2.0)
                continue
            if outage_reported:
                log("the server answers again")
                outage_reported = False
            last_ok = time.monotonic()
            bar.total = int(batch.get("total") or 0)
            bar.n = batch_terminal_count(batch)
            bar.set_postfix_str(_counts_text(batch), refresh=False)
            bar.refresh()
            if batch.get("status") == "completed":
                return batch
            delay = retry_after if retry_after is not None else 1.0
            time.sleep(min(max(delay, POLL_MIN_S), POLL_MAX_S))


def _counts_text(batch: dict[str, Any]) -> str:
    counts = batch.get("counts") or {}
    text = ", ".join(
        f"{counts.get(k, 0)} {k}" for k in ("queued", "running", "succeeded", "failed")
    )
    if batch.get("eta_s") is not None:
        text += f", eta {format_seconds(batch['eta_s'])}"
    return text


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def describe_batch(batch: dict[str, Any]) -> str:
    """A few lines for people: status, counts, progress, eta."""
    counts = batch.get("counts") or {}
    lines = [
        f"batch {batch.get('id')}: {batch.get('status')}",
        f"  items: {batch.get('total', 0)} ("
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("queued", "running", "succeeded", "failed"))
        + ")",
        f"  progress: {100 * float(batch.get('progress') or 0):.1f} %"
        f", elapsed {format_seconds(batch.get('elapsed_s'))}"
        f", eta {format_seconds(batch.get('eta_s'))}",
        f"  created {batch.get('created_at')}, closed {batch.get('closed_at') or '-'}"
        f", finished {batch.get('finished_at') or '-'}",
    ]
    callback = batch.get("callback")
    if callback:
        lines.append(
            f"  callback: {callback.get('url')} ({callback.get('state')}, "
            f"{callback.get('attempts', 0)} attempt(s))"
        )
    return "\n".join(lines)


# --- state file ----------------------------------------------------------------------


def default_state_path(paths: Sequence[Path], server: str, cwd: Path | None = None) -> Path:
    key = "\n".join(sorted(str(p.resolve()) for p in paths)) + "\n" + server.rstrip("/")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (cwd or Path.cwd()) / f".tussis-submit-{digest}.json"


@dataclass
class SubmitState:
    path: Path
    server: str
    batch_id: str
    paths: list[str] = field(default_factory=list)
    created_at: str = ""
    closed: bool = False
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> SubmitState | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"cannot read the state file {path}: {exc}") from exc
        if not isinstance(data, dict) or not data.get("batch_id") or not data.get("server"):
            raise UsageProblem(f"{path} is not a tussis submit state file")
        return cls(
            path=path,
            server=str(data["server"]),
            batch_id=str(data["batch_id"]),
            paths=list(data.get("paths") or []),
            created_at=str(data.get("created_at") or ""),
            closed=bool(data.get("closed")),
            rejected=list(data.get("rejected") or []),
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
        self, client: Client, options: SubmitOptions, log: Callable[[str], None] | None = None
    ) -> None:
        self.client = client
        self.options = options
        self.log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
        self.report = SubmitReport(server=client.server)
        self.state: SubmitState | None = None

    # -- steps --

    def _local_files(self) -> list[LocalFile]:
        found = find_files(self.options.paths)
        if not found:
            raise UsageProblem(
                "no audio files found (extensions: " + " ".join(sorted(AUDIO_SUFFIXES)) + ")"
            )
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
                    answer = self.client.create_batch(
                        part,
                        keep_open=True,
                        callback_url=self.options.callback_url,
                        on_bytes=on_bytes,
                    )
                    self.report.batch_id = answer["id"]
                    self.state = SubmitState(
                        path=self._state_path(),
                        server=self.client.server,
                        batch_id=answer["id"],
                        paths=[str(p.resolve()) for p in self.options.paths],
                        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    )
                    self._save_state()
                self.log(f"created batch {answer['id']}")
            else:
                answer = self.client.add_items(self.report.batch_id, part, on_bytes=on_bytes)
        except ApiError as exc:
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
        try:
            batch, _ = self.client.get_batch(state.batch_id)
        except ApiError as exc:
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
        parts = split_parts(todo, self.options.part_size, self.options.part_max_bytes)
        with _bar(
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
        except ApiError as exc:
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
        if opts.wait or opts.out:
            assert self.report.batch_id is not None
            self.report.batch = wait_for_batch(
                self.client, self.report.batch_id, progress=opts.progress, log=self.log
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
