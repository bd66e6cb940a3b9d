"""The typed answers of the Tussis API: a :class:`Job` and its :class:`Result` or
:class:`JobError`, a :class:`Batch` and its :class:`Evaluation`, the served
:class:`Model` entries and the service's :class:`Health`.

Each is built with ``from_api`` from the API's JSON (docs/api.md, docs/batches.md).
Fields the client does not know are ignored, so a newer server never breaks an older
client; the whole answer stays in ``raw`` for anything not typed here.
``Job`` and ``Batch`` keep the client that made them, so
``job.wait()``, ``batch.items()`` and friends need nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from tussis.connection import JOB_WAIT_S, Connection, wait_for_batch
from tussis.errors import WaitTimeout

T = TypeVar("T")

JOB_STATUSES_DONE = frozenset({"succeeded", "failed"})
POLL_S = 1.0  # between polls when the server suggests nothing (it sends Retry-After)


def _known(cls: type[T], data: Mapping[str, Any], **extra: Any) -> T:
    """``cls`` from the keys of ``data`` that it has fields for; the rest is ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names and k not in extra}, **extra)


def _model_spec(pin: Any) -> str | None:
    """``name@version`` of a job's or batch's ``model`` (``{"id", "version"}``)."""
    if isinstance(pin, Mapping) and pin.get("id") and pin.get("version"):
        return f"{pin['id']}@{pin['version']}"
    return None


# --- a single job ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """A succeeded job's analysis. ``score`` is the model's probability of the positive
    label; show ``caveat`` (what the score is worth) beside it."""

    diagnosis: str
    score: float
    threshold: float | None = None
    model_id: str | None = None
    model_version: str | None = None
    cough_detected: bool | None = None  # None when the server runs without the cough gate
    cough_score: float | None = None
    cough_segments: list[tuple[float, float]] | None = None
    caveat: str | None = None
    within_source_auc: float | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Result:
        segments = data.get("cough_segments")
        return _known(
            cls,
            data,
            cough_segments=None if segments is None else [(s[0], s[1]) for s in segments],
        )


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable machine-readable ``code`` (e.g. ``no_cough_detected``)
    and a sentence for people."""

    code: str
    message: str
    cough_detected: bool | None = None
    cough_score: float | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> JobError:
        return _known(cls, data)


@dataclass
class Job:
    """One recording's analysis; a batch's items are jobs too (with ``batch_id``,
    ``path``, ``label`` and ``group`` set)."""

    id: str
    status: str  # queued, running, succeeded or failed
    created_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    filename: str | None = None
    sha256: str | None = None
    duration_s: float | None = None
    result: Result | None = None
    error: JobError | None = None
    batch_id: str | None = None
    path: str | None = None
    label: str | None = None
    group: str | None = None
    # ``name@version`` of the model it is scored with (chosen at submission).
    model: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _client: Connection | None = field(default=None, repr=False, compare=False)
    _retry_after: float | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_api(
        cls,
        data: Mapping[str, Any],
        client: Connection | None = None,
        retry_after: float | None = None,
    ) -> Job:
        audio = data.get("audio") or {}
        return _known(
            cls,
            data,
            result=Result.from_api(data["result"]) if data.get("result") else None,
            error=JobError.from_api(data["error"]) if data.get("error") else None,
            filename=audio.get("filename"),
            sha256=audio.get("sha256"),
            duration_s=audio.get("duration_s"),
            model=_model_spec(data.get("model")),
            raw=dict(data),
            _client=client,
            _retry_after=retry_after,
        )

    @property
    def done(self) -> bool:
        return self.status in JOB_STATUSES_DONE

    def _owner(self) -> Connection:
        if self._client is None:
            raise RuntimeError("this Job was not made by a Client")
        return self._client

    def reload(self) -> Job:
        """Fetch the job again and update this object in place; returns it."""
        data, retry_after = self._owner().get_job_data(self.id, policy="poll")
        return self._update(data, retry_after)

    def _update(self, data: Mapping[str, Any], retry_after: float | None) -> Job:
        fresh = Job.from_api(data, self._client, retry_after)
        for f in fields(self):
            if f.name != "_client":
                setattr(self, f.name, getattr(fresh, f.name))
        return self

    def wait(self, timeout: float | None = None, poll: float | None = None) -> Job:
        """Wait until the job has succeeded or failed; returns it. Raises
        :class:`~tussis.errors.WaitTimeout` after ``timeout`` seconds.

        By default it long-polls (``Prefer: wait``): the server answers the moment the
        worker has written the result, and unchanged states come back as ``304``. A
        server that ignores the preference is polled every ``Retry-After`` seconds
        instead, as is any server when ``poll`` (seconds between polls) is given."""
        deadline = None if timeout is None else time.monotonic() + timeout
        long_polls = poll is None
        etag: str | None = None
        path = f"/api/v1/jobs/{self.id}"
        while not self.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(
                    f"job {self.id} is still {self.status} after {timeout:g} s", self.id
                )
            # Whole seconds, never past the caller's deadline.
            wait = JOB_WAIT_S if left is None else min(JOB_WAIT_S, int(left))
            if long_polls and not wait and left is not None:
                # Under a second left: one plain look, then the deadline.
                if not self.reload().done:
                    time.sleep(left)
                continue
            if long_polls:
                answer = self._owner().poll(path, wait=wait, etag=etag)
                if answer.data is not None:
                    self._update(answer.data, answer.retry_after)
                    etag = answer.etag
                long_polls = answer.waited  # else: a server without long polls
                continue
            delay = poll if poll is not None else (self._retry_after or POLL_S)
            if left is not None:
                delay = min(delay, left)
            time.sleep(delay)
            self.reload()
        return self


# --- batches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


@dataclass
class Batch:
    """A batch of recordings (docs/batches.md). ``rejected`` lists the files the server
    turned away while they were submitted (``{"path", "error": {"code", "message"}}``),
    when this object comes from :meth:`~tussis.client.Client.submit_batch`."""

    id: str
    status: str  # open, processing or completed
    total: int = 0
    counts: Counts = field(default_factory=Counts)
    progress: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    created_at: str | None = None
    closed_at: str | None = None
    finished_at: str | None = None
    # ``name@version`` of the model every item is scored with.
    model: str | None = None
    # A rescored batch (``Client.rescore``): the batch whose audio it scored again.
    rescored_from: str | None = None
    rejected: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _client: Connection | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_api(
        cls,
        data: Mapping[str, Any],
        client: Connection | None = None,
        rejected: list[dict[str, Any]] | None = None,
    ) -> Batch:
        return _known(
            cls,
            data,
            counts=_known(Counts, data.get("counts") or {}),
            model=_model_spec(data.get("model")),
            rejected=list(rejected or []),
            raw=dict(data),
            _client=client,
        )

    @property
    def done(self) -> bool:
        return self.status == "completed"

    def _owner(self) -> Connection:
        if self._client is None:
            raise RuntimeError("this Batch was not made by a Client")
        return self._client

    def _update(self, data: Mapping[str, Any]) -> Batch:
        fresh = Batch.from_api(data, self._client, self.rejected)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        return self

    def reload(self) -> Batch:
        """Fetch the batch again and update this object in place; returns it."""
        data, _ = self._owner().get_batch(self.id)
        return self._update(data)

    def wait(self, progress: bool | None = True, timeout: float | None = None) -> Batch:
        """Poll until every item has succeeded or failed, with a progress bar on stderr
        (``progress=None``: only on a terminal); returns the batch. Raises
        :class:`~tussis.errors.WaitTimeout` after ``timeout`` seconds."""
        data = wait_for_batch(self._owner(), self.id, progress=progress, timeout=timeout)
        return self._update(data)

    def items(self) -> Iterator[Job]:
        """Every item of the batch, in upload order, fetching page after page."""
        client = self._owner()
        for data in client.iter_items(self.id):
            yield Job.from_api(data, client)

    def to_csv(self, path: str | Path) -> Path:
        """Write the results CSV (one row per item, docs/batches.md) to ``path``."""
        out = Path(path)
        self._owner().write_results(self.id, out)
        return out

    def evaluation(self) -> Evaluation:
        """How the model did on the batch's labelled items; refused with
        ``batch_not_finished`` (:class:`~tussis.errors.RequestRefused`) until it finishes."""
        return Evaluation.from_api(self._owner().get_evaluation(self.id))

    def compare(self, other: Batch | str) -> Comparison:
        """This batch's model against ``other``'s on the recordings both batches hold
        with the same label (docs/batches.md "Compare two models"); refused with a
        ``422`` code (``compare_batch_not_found``, ``no_common_items``, ...)."""
        other_id = other if isinstance(other, str) else other.id
        return Comparison.from_api(self._owner().get_evaluation(self.id, compare=other_id))


@dataclass(frozen=True)
class Metrics:
    """The evaluation figures of one set of items (overall, or one group), at the
    model's threshold; ``auc`` is ``None`` when one label is absent."""

    n: int
    positives: int = 0
    negatives: int = 0
    auc: float | None = None
    auc_ci: tuple[float, float] | None = None  # bootstrap 95 % interval
    accuracy: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    confusion: dict[str, int] = field(default_factory=dict)  # tp, fn, tn, fp
    brier: float | None = None
    ece: float | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Metrics:
        ci = data.get("auc_ci")
        return _known(cls, data, auc_ci=(ci[0], ci[1]) if ci else None)


@dataclass(frozen=True)
class EvaluatedModel:
    id: str | None
    version: str | None
    labels: list[str] = field(default_factory=list)  # [negative, positive]
    caveat: str | None = None
    within_source_auc: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """A finished batch's evaluation (docs/batches.md "Evaluate a labelled batch")."""

    overall: Metrics
    groups: dict[str, Metrics]  # the 50 largest groups
    group_only_auc: float | None
    model: EvaluatedModel
    threshold: float | None
    rejected_by_gate: int = 0
    label_errors: int = 0
    label_error_examples: list[dict[str, str]] = field(default_factory=list)
    failed: int = 0
    unlabelled: int = 0
    groups_omitted: int = 0  # groups beyond the 50 largest: no figures of their own
    # Items the model was trained or tuned on, left out of the figures above:
    # {"left_out", "train", "conflicting_labels", "split_known", "message"}.
    training_items: dict[str, Any] = field(default_factory=dict)
    # The figures with them (they flatter the model), or None when none was left out.
    all_items: dict[str, Any] | None = None
    # Duration, active share and loudness alone beside the model's AUC, overall and
    # per group (docs/batches.md).
    baselines: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Evaluation:
        errors = data.get("label_errors") or {}
        return cls(
            overall=Metrics.from_api(data.get("overall") or {"n": 0}),
            groups={k: Metrics.from_api(v) for k, v in (data.get("groups") or {}).items()},
            group_only_auc=data.get("group_only_auc"),
            model=_known(EvaluatedModel, data.get("model") or {"id": None, "version": None}),
            threshold=data.get("threshold"),
            rejected_by_gate=int(data.get("rejected_by_gate") or 0),
            label_errors=int(errors.get("count") or 0),
            label_error_examples=list(errors.get("examples") or []),
            failed=int(data.get("failed") or 0),
            unlabelled=int(data.get("unlabelled") or 0),
            groups_omitted=int(data.get("groups_omitted") or 0),
            training_items=dict(data.get("training_items") or {}),
            all_items=data.get("all_items"),
            baselines=dict(data.get("baselines") or {}),
            raw=dict(data),
        )


@dataclass(frozen=True)
class ComparedFigures:
    """Both models on the same items: AUCs, ``difference`` (second - first), DeLong's
    ``delong`` ({se, ci, z, p_value}) and the paired bootstrap's ``bootstrap_ci``."""

    n: int
    positives: int = 0
    auc_first: float | None = None
    auc_second: float | None = None
    difference: float | None = None
    delong: dict[str, Any] | None = None
    bootstrap_ci: tuple[float, float] | None = None
    baselines: dict[str, Any] | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ComparedFigures:
        ci = data.get("bootstrap_ci")
        return _known(cls, data, bootstrap_ci=(ci[0], ci[1]) if ci else None)


@dataclass(frozen=True)
class Comparison:
    """Two batches' models on the recordings they share (docs/batches.md "Compare two
    models"): ``first`` is the batch compared, ``second`` the other."""

    first: dict[str, Any]
    second: dict[str, Any]
    items: dict[str, Any]  # paired, left_out, compared, message
    overall: ComparedFigures
    groups: dict[str, ComparedFigures]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            first=dict(data.get("first") or {}),
            second=dict(data.get("second") or {}),
            items=dict(data.get("items") or {}),
            overall=ComparedFigures.from_api(data.get("overall") or {"n": 0}),
            groups={k: ComparedFigures.from_api(v) for k, v in (data.get("groups") or {}).items()},
            raw=dict(data),
        )


# --- the service -----------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """A model bundle the workers serve or served (``GET /api/v1/models``)."""

    id: str
    version: str
    role: str  # diagnosis or cough_gate
    active: bool = False
    default: bool = False  # what a job or batch without ``model`` is scored with
    fingerprint: str | None = None
    backbone: str | None = None
    labels: list[str] = field(default_factory=list)
    threshold: float | None = None
    first_seen_at: str | None = None
    last_seen_at: str | None = None
    card: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Model:
        return _known(cls, data)


@dataclass(frozen=True)
class Health:
    """``GET /readyz``: ``ready`` when the service can take jobs; ``checks`` names each
    dependency's state (``database``, ``broker``, ...), ``message`` says what is wrong."""

    ready: bool
    status: str
    checks: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
