"""Batches and evaluations as text for people (``tussis status``, ``tussis submit``,
``tussis results --evaluation``)."""

from __future__ import annotations

import textwrap
from typing import Any


def counts_text(batch: dict[str, Any]) -> str:
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
    model = batch.get("model") or {}
    if model.get("id"):
        rescored = batch.get("rescored_from")
        lines.append(
            f"  model: {model['id']}@{model.get('version')}"
            + (f" (rescoring batch {rescored})" if rescored else "")
        )
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
    omitted = _count(evaluation.get("groups_omitted"))
    if omitted:
        lines.append(
            f"  ({omitted} smaller groups have no row of their own; their items count in "
            "'overall' and in the group-only AUC)"
        )
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
