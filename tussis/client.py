"""The HTTP client of the Tussis API (docs/api.md, docs/batches.md); ``tussis.submit``
builds ``tussis submit``, ``tussis status`` and ``tussis results`` on it.

``submit`` is resumable. It keeps a small state file (server + batch id) while a
batch is being uploaded or awaited; a rerun of the same command asks the server
which (path, sha256) pairs the open batch already holds and uploads only the rest,
so nothing the server already has is sent twice. The state file is removed once the
batch is closed (and, when waiting, its results are in).
The request that creates the batch carries an ``Idempotency-Key`` (kept in the state
file), so retrying it after a lost answer never creates a second batch.

This module talks HTTP only; it never imports the service's code.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import requests

from tussis.errors import RequestRefused, ServerUnreachable, TussisError, UsageProblem, root_cause
from tussis.files import LocalFile, progress_bar
from tussis.multipart import MultipartBody

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
UPLOAD_READ_TIMEOUT_S = 900.0  # the API decodes every file of a part before it answers
PART_MAX_BYTES = 256 * 1024 * 1024  # a part also ends here, well below the server's limit
POLL_MIN_S, POLL_MAX_S = 0.5, 10.0
OUTAGE_TOLERANCE_S = 120.0  # while waiting, keep polling through a server restart this long
PAGE_LIMIT = 200
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
LABELS_FIELD = "labels"  # the multipart file with a part's labels CSV
EVALUATION_FIGURES = ("roc.png", "calibration.png")

RATE_LIMIT_RETRIES = 5


def _retry_after_s(response: requests.Response) -> float:
    try:
        return min(60.0, max(0.5, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


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
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = self.session.request(
                    method, url, timeout=(CONNECT_TIMEOUT_S, read_timeout), **kwargs
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise ServerUnreachable(
                    f"cannot reach the Tussis server at {self.server}: {root_cause(exc)}"
                ) from exc
            # Over the key's rate limit: wait as told. Only reads are sent again here;
            # an upload's body is a stream that cannot be replayed.
            if response.status_code != 429 or method != "GET" or attempt == RATE_LIMIT_RETRIES:
                break
            response.close()
            time.sleep(_retry_after_s(response))
        if response.status_code >= 400:
            error = RequestRefused.from_response(response)
            response.close()
            raise error
        return response

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
            return self.request(
                "POST",
                path,
                data=body,
                headers=headers,
                read_timeout=UPLOAD_READ_TIMEOUT_S,
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
    ) -> dict[str, Any]:
        """Create a batch with a first part. With ``idempotency_key``, a retry of the same
        request answers the batch the first try created (docs/api.md); such a replayed
        answer is marked ``"replayed": true`` and has no per-file report. ``labels`` is
        the part's labels CSV (``path,label[,group]``, tussis/labels.py)."""
        fields = [("open", "true" if keep_open else "false")]
        if callback_url:
            fields.append(("callback_url", callback_url))
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

    def get_evaluation(self, batch_id: str) -> dict[str, Any]:
        """The model's evaluation on a finished batch's labelled items (docs/batches.md);
        refused with ``batch_not_finished`` before the batch finishes."""
        answer: dict[str, Any] = self.request(
            "GET", f"/api/v1/batches/{batch_id}/evaluation"
        ).json()
        return answer

    def get_evaluation_figure(self, batch_id: str, name: str) -> bytes:
        """``roc.png`` or ``calibration.png`` of a batch's evaluation."""
        return self.request("GET", f"/api/v1/batches/{batch_id}/evaluation/{name}").content

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
                raise ServerUnreachable(
                    f"the connection to {self.server} broke while downloading results: "
                    f"{root_cause(exc)}"
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
    with progress_bar(
        progress, total=None, unit="item", desc="analysing", dynamic_ncols=True
    ) as bar:
        while True:
            try:
                batch, retry_after = client.get_batch(batch_id)
            except ServerUnreachable as exc:
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


# --- a batch's evaluation on its labelled items -----------------------------------------

_METRIC_COLUMNS = ("n", "positives", "AUC", "AUC 95% CI", "sens", "spec", "Brier")
_CONFUSION = ("tp", "fn", "tn", "fp")


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _count(value: Any) -> int:
    """A count the API gives as a number, a list, or ``{"count", "examples"}``."""
    if isinstance(value, dict):
        return int(value.get("count") or 0)
    if isinstance(value, list | tuple):
        return len(value)
    return int(value or 0)


def _metrics_row(name: str, metrics: dict[str, Any]) -> list[str]:
    ci = metrics.get("auc_ci") or [None, None]
    confusion = metrics.get("confusion") or {}
    return [
        name,
        str(metrics.get("n", "-")),
        str(metrics.get("positives", "-")),
        _number(metrics.get("auc")),
        "-" if ci[0] is None else f"{_number(ci[0])}-{_number(ci[1])}",
        _number(metrics.get("sensitivity")),
        _number(metrics.get("specificity")),
        _number(metrics.get("brier")),
        *(str(confusion.get(k, "-")) for k in _CONFUSION),
    ]


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=88, initial_indent="  ", subsequent_indent="    ")


def describe_evaluation(evaluation: dict[str, Any], batch_id: str = "") -> str:
    """The evaluation as a table for people: overall and per group, then the group-only
    baseline and what was left out of the figures."""
    model = evaluation.get("model") or {}
    head = f"evaluation of batch {batch_id}" if batch_id else "evaluation"
    head += f": model {model.get('id')} {model.get('version')}"
    if evaluation.get("threshold") is not None:
        head += f", threshold {_number(evaluation['threshold'])}"
    rows = [["", *_METRIC_COLUMNS, *(k.upper() for k in _CONFUSION)]]
    rows.append(_metrics_row("overall", evaluation.get("overall") or {}))
    for name, metrics in sorted((evaluation.get("groups") or {}).items()):
        rows.append(_metrics_row(f"group {name}", metrics or {}))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    lines.append(
        _paragraph(
            "AUC: how well the score ranks positives above negatives (0.5 is chance), with "
            "a bootstrap 95 % CI; sens/spec and TP FN TN FP at the model's threshold; Brier: "
            "mean squared error of the score as a probability (lower is better)."
        )
    )
    if evaluation.get("groups"):
        lines.append(
            _paragraph(
                f"group-only AUC: {_number(evaluation.get('group_only_auc'))} (how well the "
                "group alone predicts the label: well above 0.5, the group by itself predicts "
                "the label, and an overall AUC may come from telling the groups apart; "
                "compare the AUCs within each group)"
            )
        )
    left_out = [
        ("rejected by the cough gate", evaluation.get("rejected_by_gate")),
        ("label errors", evaluation.get("label_errors")),
        ("failed", evaluation.get("failed")),
    ]
    if "unlabelled" in evaluation:
        left_out.append(("unlabelled", evaluation.get("unlabelled")))
    lines.append(
        "  not in the figures: " + ", ".join(f"{_count(value)} {what}" for what, value in left_out)
    )
    errors = evaluation.get("label_errors")
    examples = errors.get("examples") if isinstance(errors, dict) else errors
    if isinstance(examples, list) and examples:
        known = " and ".join(f"'{x}'" for x in model.get("labels") or []) or "two labels"
        lines.append(f"  label errors: labels the model does not have (it knows {known}):")
        lines.extend(
            f"    {e.get('path')}: '{e.get('label')}'" for e in examples if isinstance(e, dict)
        )
        if _count(errors) > len(examples):
            lines.append(f"    ... and {_count(errors) - len(examples)} more")
    caveat = model.get("caveat")
    if caveat:
        lines.append(f"  model caveat: {caveat}")
    return "\n".join(lines)
