"""The HTTP layer of the Tussis client: one :class:`Connection` to a server, its retry
policies, and the batch endpoints as plain JSON (docs/api.md, docs/batches.md), which
:mod:`tussis.submit` builds ``tussis submit`` on and :class:`tussis.client.Client`
builds its typed objects on.

Retries are urllib3's ``Retry`` mounted on the requests session: connection errors, and
502/503/504/429 answers (honouring ``Retry-After``, seconds or an HTTP date, capped at a
minute), with exponential backoff. Only requests that are safe to send twice are
retried: reads, and a ``POST`` that carries an ``Idempotency-Key`` and a body held in
memory (a single job). Batch uploads stream their files and are never replayed here;
``tussis.submit`` resumes them instead.

This module talks HTTP only; it never imports the service's code.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tussis.csv_cells import lines_of, safe_csv
from tussis.describe import counts_text
from tussis.errors import (
    RequestRefused,
    ServerUnreachable,
    TussisError,
    UsageProblem,
    WaitTimeout,
    root_cause,
)
from tussis.files import LocalFile, progress_bar
from tussis.multipart import MultipartBody

URL_ENV = "TUSSIS_URL"
URL_ENV_OLD = "TUSSIS_SERVER"  # the name `tussis` read first; still honoured
API_KEY_ENV = "TUSSIS_API_KEY"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
UPLOAD_READ_TIMEOUT_S = 900.0  # the API decodes every file of a part before it answers
PART_MAX_BYTES = 256 * 1024 * 1024  # a part also ends here, well below the server's limit
POLL_MIN_S, POLL_MAX_S = 0.5, 10.0
PAGE_LIMIT = 200


def _compare_query(compare: str | None) -> str:
    return "" if compare is None else "?" + urlencode({"compare": compare})


# How long a batch's evaluation is waited for while a worker computes it (it is done
# once, then kept): seconds for thousands of items, longer behind a busy queue.
EVALUATION_WAIT_S = 300.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
LABELS_FIELD = "labels"  # the multipart file with a part's labels CSV
EVALUATION_FIGURES = ("roc.png", "calibration.png")

# Retries (urllib3 Retry). Backoff: 0, 1, 2, 4, 8 s ... capped at BACKOFF_MAX_S.
RETRIES = 5
CONNECT_RETRIES = 3  # a server that is not there at all is reported within seconds
BACKOFF_FACTOR_S = 0.5
BACKOFF_MAX_S = 10.0
RETRY_AFTER_MAX_S = 60.0  # a longer Retry-After is cut to this
RETRY_STATUSES = frozenset({429, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# While waiting, a server restart (connection refused for a minute or two) is ridden out.
POLL_CONNECT_RETRIES = 15  # 0 + 1 + 2 + 4 + 8 + 10 x 10 s: about two minutes


class _Retry(Retry):
    """urllib3's Retry with the server's Retry-After capped at ``RETRY_AFTER_MAX_S``."""

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, RETRY_AFTER_MAX_S)


def retry_policy(
    *, methods: frozenset[str] = SAFE_METHODS, connect: int = CONNECT_RETRIES
) -> Retry:
    """The retries mounted on a session: connection errors (``connect`` times, before
    anything is sent, so for every method), broken reads and RETRY_STATUSES answers for
    ``methods`` only. ``raise_on_status=False``: the last answer reaches the caller, who
    raises :class:`RequestRefused` with the server's code."""
    return _Retry(
        total=None,
        connect=connect,
        read=2,
        status=RETRIES,
        other=0,
        allowed_methods=methods,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=BACKOFF_FACTOR_S,
        backoff_max=BACKOFF_MAX_S,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


# Which requests may be sent again, by name.
_POLICIES: dict[str, Callable[[], Retry | int]] = {
    "default": retry_policy,  # reads; POSTs only when the connection was never made
    "replayable": lambda: retry_policy(methods=SAFE_METHODS | {"POST"}),  # Idempotency-Key
    "poll": lambda: retry_policy(connect=POLL_CONNECT_RETRIES),  # waiting on a job or batch
    "once": lambda: _Retry(
        connect=CONNECT_RETRIES, read=0, status=0, other=0, raise_on_status=False
    ),
}


# A long poll asks the server to hold the answer this long (it allows up to 60 s). A
# batch's is shorter, so that a progress bar still moves between the answers.
JOB_WAIT_S = 60
BATCH_WAIT_S = 5


@dataclass(frozen=True)
class Polled:
    """One poll's answer: the body (None for ``304 Not Modified``), the server's
    ``Retry-After`` and ``ETag``, and whether it held the answer as asked (``waited``:
    False from a server that ignores ``Prefer: wait``, which is then polled plainly)."""

    data: dict[str, Any] | None
    retry_after: float | None
    etag: str | None
    waited: bool


# --- HTTP connection ---------------------------------------------------------------


class Connection:
    """One Tussis server, spoken to in JSON.

    ``base_url`` defaults to ``$TUSSIS_URL`` and ``api_key`` to ``$TUSSIS_API_KEY``
    (sent as a Bearer token; a server without keys needs none). ``timeout`` is the
    seconds to wait for an answer to an ordinary request (uploads get longer)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = READ_TIMEOUT_S,
    ) -> None:
        url = base_url or os.environ.get(URL_ENV) or os.environ.get(URL_ENV_OLD)
        if not url:
            raise UsageProblem(
                f"no Tussis server given: pass Client(base_url=...) or set ${URL_ENV}, "
                "e.g. http://127.0.0.1:5000"
            )
        server = url.strip().rstrip("/")
        if not server.startswith(("http://", "https://")):
            raise UsageProblem(f"the server must be an http(s) URL, not {server!r}")
        self.server = server
        self.timeout = timeout
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        self._headers = {"User-Agent": "tussis-python"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._sessions: dict[str, requests.Session] = {}

    @property
    def base_url(self) -> str:
        return self.server

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.server!r})"

    def _session(self, policy: str) -> requests.Session:
        if policy not in self._sessions:
            session = requests.Session()
            session.headers.update(self._headers)
            adapter = HTTPAdapter(max_retries=_POLICIES[policy]())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions[policy] = session
        return self._sessions[policy]

    @property
    def session(self) -> requests.Session:
        """The requests session of ordinary requests (its headers carry the key)."""
        return self._session("default")

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        read_timeout: float | None = None,
        policy: str | None = None,
        ok: Sequence[int] = (),
        **kwargs: Any,
    ) -> requests.Response:
        """One request, retried as ``policy`` allows (default: ``replayable`` for a
        ``POST`` with an Idempotency-Key and an in-memory body, else ``default``). An
        error answer (other than the statuses in ``ok``) raises :class:`RequestRefused`."""
        url = path if path.startswith("http") else f"{self.server}{path}"
        if policy is None:
            headers = kwargs.get("headers") or {}
            replayable = IDEMPOTENCY_HEADER in headers and not isinstance(
                kwargs.get("data"), MultipartBody
            )
            policy = "replayable" if replayable else "default"
        try:
            response = self._session(policy).request(
                method, url, timeout=(CONNECT_TIMEOUT_S, read_timeout or self.timeout), **kwargs
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ServerUnreachable(
                f"cannot reach the Tussis server at {self.server}: {root_cause(exc)}"
            ) from exc
        if response.status_code >= 400 and response.status_code not in ok:
            error = RequestRefused.from_response(response)
            response.close()
            raise error
        return response

    # -- single jobs --

    def _upload(
        self,
        path: str,
        files: Sequence[LocalFile],
        fields: Sequence[tuple[str, str]] = (),
        on_bytes: Callable[[int], object] | None = None,
        idempotency_key: str | None = None,
        labels: bytes | None = None,
    ) -> requests.Response:
        attachments = [(LABELS_FIELD, "labels.csv", "text/csv", labels)] if labels else []
        body = MultipartBody(fields, files, on_bytes=on_bytes, attachments=attachments)
        headers = {"Content-Type": body.content_type}
        if idempotency_key:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        try:
            # A streamed body is never replayed: tussis.submit resumes instead.
            return self.request(
                "POST",
                path,
                data=body,
                headers=headers,
                read_timeout=UPLOAD_READ_TIMEOUT_S,
                policy="default",
            )
        finally:
            body.close()

    def create_batch(
        self,
        files: Sequence[LocalFile],
        *,
        keep_open: bool = True,
        callback_url: str | None = None,
        on_bytes: Callable[[int], object] | None = None,
        idempotency_key: str | None = None,
        labels: bytes | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Create a batch with a first part (``model``: ``name`` or ``name@version``).
        With ``idempotency_key``, a retry of the same request answers the batch the first
        try created (docs/api.md); such a replayed answer is marked ``"replayed": true``
        and has no per-file report. ``labels`` is the part's labels CSV
        (``path,label[,group]``, tussis/labels.py)."""
        fields = [("open", "true" if keep_open else "false")]
        if callback_url:
            fields.append(("callback_url", callback_url))
        if model:
            fields.append(("model", model))
        response = self._upload(
            "/api/v1/batches", files, fields, on_bytes, idempotency_key, labels=labels
        )
        answer: dict[str, Any] = response.json()
        if response.headers.get(REPLAYED_HEADER, "").lower() == "true":
            answer["replayed"] = True
        return answer

    def add_items(
        self,
        batch_id: str,
        files: Sequence[LocalFile],
        on_bytes: Callable[[int], object] | None = None,
        labels: bytes | None = None,
    ) -> dict[str, Any]:
        path = f"/api/v1/batches/{batch_id}/items"
        return self._upload(path, files, on_bytes=on_bytes, labels=labels).json()

    def rescore_batch(
        self, batch_id: str, model: str | None, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], float | None]:
        """``POST /api/v1/batches/{id}/rescore``: the new batch and its Retry-After."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else {}
        response = self.request(
            "POST",
            f"/api/v1/batches/{batch_id}/rescore",
            data={"model": model} if model else {},
            headers=headers,
            read_timeout=UPLOAD_READ_TIMEOUT_S,
        )
        return response.json(), _retry_after(response)

    def close_batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/batches/{batch_id}/close").json()

    def get_job_data(
        self, job_id: str, *, policy: str = "default"
    ) -> tuple[dict[str, Any], float | None]:
        """The job, and the server's suggested seconds before the next poll."""
        response = self.request("GET", f"/api/v1/jobs/{job_id}", policy=policy)
        return response.json(), _retry_after(response)

    def poll(self, path: str, *, wait: int | None = None, etag: str | None = None) -> Polled:
        """One poll of a job or batch (``path``), as a long poll when ``wait`` is given
        (``Prefer: wait``, docs/api.md "Polling") and conditional on ``etag``
        (``If-None-Match``: a ``304`` leaves ``data`` None). Rides out a server restart
        like every wait (the ``poll`` retry policy)."""
        headers = {}
        if wait:
            headers["Prefer"] = f"wait={wait}"
        if etag:
            headers["If-None-Match"] = etag
        response = self.request(
            "GET", path, headers=headers, policy="poll", read_timeout=self.timeout + (wait or 0)
        )
        applied = response.headers.get("Preference-Applied", "").replace(" ", "")
        return Polled(
            None if response.status_code == 304 else response.json(),
            _retry_after(response),
            response.headers.get("ETag"),
            waited=bool(wait) and applied.startswith("wait="),
        )

    def get_batch(
        self, batch_id: str, *, policy: str = "default"
    ) -> tuple[dict[str, Any], float | None]:
        """The batch, and the server's suggested seconds before the next poll."""
        response = self.request("GET", f"/api/v1/batches/{batch_id}", policy=policy)
        return response.json(), _retry_after(response)

    def iter_items(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every item of the batch, page by page. ``next_cursor`` is opaque (URL-safe
        base64, docs/api.md "Pagination"): it is passed back exactly as received."""
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

    def _computed(self, path: str, timeout: float = EVALUATION_WAIT_S) -> requests.Response:
        """GET ``path``, waiting out ``202`` answers (a worker computes it, once) as
        ``Retry-After`` says; :class:`WaitTimeout` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.request("GET", path)
            if response.status_code != 202:
                return response
            delay = _retry_after(response) or 1.0
            if time.monotonic() + delay > deadline:
                raise WaitTimeout(
                    f"the server was still computing {path} after {timeout:.0f} s; ask again later",
                    path.split("/")[4],  # /api/v1/batches/<id>/...
                )
            time.sleep(delay)

    def get_evaluation(self, batch_id: str, compare: str | None = None) -> dict[str, Any]:
        """The model's evaluation on a finished batch's labelled items (docs/batches.md),
        waiting while a worker computes it (once); refused with ``batch_not_finished``
        before the batch finishes. With ``compare`` (another batch's id): the paired
        comparison of the two batches' models on the recordings they share."""
        path = f"/api/v1/batches/{batch_id}/evaluation" + _compare_query(compare)
        answer: dict[str, Any] = self._computed(path).json()
        return answer

    def get_evaluation_figure(self, batch_id: str, name: str, compare: str | None = None) -> bytes:
        """``roc.png`` or ``calibration.png`` of a batch's evaluation; with ``compare``,
        ``roc.png`` holds both models' curves."""
        path = f"/api/v1/batches/{batch_id}/evaluation/{name}" + _compare_query(compare)
        return self._computed(path).content

    def download_results(self, batch_id: str, out: BinaryIO) -> int:
        """Stream the results CSV into ``out``, every cell made safe to open in a
        spreadsheet (tussis/csv_cells.py: whichever server wrote it, no cell starts a
        formula); returns the bytes written."""
        written = 0
        with self.request(
            "GET", f"/api/v1/batches/{batch_id}/results.csv", stream=True
        ) as response:
            try:
                chunks = response.iter_content(chunk_size=64 * 1024)
                for text in safe_csv(lines_of(chunks)):
                    data = text.encode("utf-8", "surrogateescape")
                    out.write(data)
                    written += len(data)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise ServerUnreachable(
                    f"the connection to {self.server} broke while downloading results: "
                    f"{root_cause(exc)}"
                ) from exc
            except csv.Error as exc:
                raise TussisError(f"the results from {self.server} are not CSV: {exc}") from exc
        return written

    def write_results(self, batch_id: str, out: Path) -> None:
        """Write the results CSV to ``out`` (whole or not at all)."""
        tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as fh:
                self.download_results(batch_id, fh)
            os.replace(tmp, out)
        except OSError as exc:
            raise TussisError(f"cannot write {out}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)


def item_key(item: dict[str, Any]) -> tuple[str, str]:
    audio = item.get("audio") or {}
    return (str(item.get("path")), str(audio.get("sha256") or item.get("sha256")))


def batch_terminal_count(batch: dict[str, Any]) -> int:
    counts = batch.get("counts") or {}
    return int(counts.get("succeeded", 0)) + int(counts.get("failed", 0))


def wait_for_batch(
    client: Connection,
    batch_id: str,
    *,
    progress: bool | None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll the batch until it is completed, with a progress bar; returns the batch.
    The polls ride out a server restart (the ``poll`` retry policy); ``timeout`` raises
    :class:`WaitTimeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    path = f"/api/v1/batches/{batch_id}"
    batch: dict[str, Any] = {}
    etag: str | None = None
    long_polls = True  # until the server shows it ignores Prefer: wait
    with progress_bar(
        progress, total=None, unit="item", desc="analysing", dynamic_ncols=True
    ) as bar:
        first = True
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            # Whole seconds, never past the caller's deadline (under one: a plain poll).
            wait = BATCH_WAIT_S if left is None else min(BATCH_WAIT_S, int(left))
            answer = client.poll(path, wait=wait if long_polls and wait else None, etag=etag)
            long_polls = answer.waited or (long_polls and not wait)
            if answer.data is not None:
                batch, etag = answer.data, answer.etag
            bar.total = int(batch.get("total") or 0)
            bar.n = batch_terminal_count(batch)
            if first:
                # Items finished before the first frame (while the files went up) are no
                # rate: counted from here, the bar's items/s is the analysis's own.
                bar.initial, first = bar.n, False
            bar.set_postfix_str(counts_text(batch), refresh=False)
            bar.refresh()
            if batch.get("status") == "completed":
                return batch
            if deadline is not None and deadline - time.monotonic() <= 0:
                raise WaitTimeout(
                    f"batch {batch_id} is still {batch.get('status')} after {timeout:g} s",
                    batch_id,
                )
            if answer.waited:
                continue  # the server held the answer: ask again at once
            delay = min(max(answer.retry_after or 1.0, POLL_MIN_S), POLL_MAX_S)
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(delay)


def _retry_after(response: requests.Response) -> float | None:
    """The server's suggested seconds before the next poll, if it sent one."""
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
