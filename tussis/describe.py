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
    lines = [head]
    seen = evaluation.get("training_items") or {}
    if seen.get("message"):
        # Said before the figures: they leave these items out.
        lines.append(_paragraph(str(seen["message"])))
    lines.extend(_metrics_table(evaluation))
    baselines = evaluation.get("baselines") or {}
    if baselines:
        lines.append("  trivial baselines (each feature alone as the score, either direction):")
        lines.extend(_baseline_rows(baselines))
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
    every = evaluation.get("all_items")
    if every:
        lines.append(
            f"  FLATTERING, with the {_count(seen.get('left_out'))} items the model saw in "
            "training (not the figures above):"
        )
        lines.extend("  " + line for line in _metrics_table(every))
    caveat = model.get("caveat")
    if caveat:
        lines.append(f"  model caveat: {caveat}")
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        ).rstrip()
        for row in rows
    ]


def _metrics_table(evaluation: dict[str, Any]) -> list[str]:
    rows = [["", *_METRIC_COLUMNS, *(k.upper() for k in _CONFUSION)]]
    rows.append(_metrics_row("overall", evaluation.get("overall") or {}))
    for name, metrics in sorted((evaluation.get("groups") or {}).items()):
        rows.append(_metrics_row(f"group {name}", metrics or {}))
    return _table(rows)


_BASELINES = ("duration", "active_share", "loudness")


def _baseline_rows(baselines: dict[str, Any]) -> list[str]:
    """The model's AUC beside each baseline's, per group, flagged where it does not
    beat one."""
    rows = [["", "model AUC", *(b.replace("_", " ") for b in _BASELINES), ""]]
    named = [("overall", baselines.get("overall") or {})]
    named += [(f"group {k}", v or {}) for k, v in sorted((baselines.get("groups") or {}).items())]
    for name, figures in named:
        beaten = figures.get("not_beaten_by") or []
        rows.append(
            [
                name,
                _number(figures.get("model_auc")),
                *(_number((figures.get(b) or {}).get("auc")) for b in _BASELINES),
                f"NOT BETTER than {', '.join(x.replace('_', ' ') for x in beaten)}"
                if beaten
                else "",
            ]
        )
    return _table(rows)


def describe_comparison(comparison: dict[str, Any], batch_id: str = "", other: str = "") -> str:
    """Two models on the recordings two batches share: both AUCs, the difference and
    its paired 95 % intervals, overall and per group, then the baselines."""
    first, second = comparison.get("first") or {}, comparison.get("second") or {}
    items = comparison.get("items") or {}
    lines = [
        f"comparison of batch {batch_id} (first: {first.get('id')} {first.get('version')}) "
        f"with batch {other} (second: {second.get('id')} {second.get('version')})",
        _paragraph(str(items.get("message", ""))),
    ]
    rows = [
        ["", "n", "AUC first", "AUC second", "difference", "DeLong 95% CI", "p", "bootstrap CI"]
    ]
    named = [("overall", comparison.get("overall") or {})]
    named += [(f"group {k}", v or {}) for k, v in sorted((comparison.get("groups") or {}).items())]
    for name, f in named:
        delong = f.get("delong") or {}
        ci = delong.get("ci") or [None, None]
        boot = f.get("bootstrap_ci") or [None, None]
        rows.append(
            [
                name,
                str(f.get("n", "-")),
                _number(f.get("auc_first")),
                _number(f.get("auc_second")),
                _number(f.get("difference")),
                f"[{_number(ci[0])}, {_number(ci[1])}]",
                _number(delong.get("p_value")),
                f"[{_number(boot[0])}, {_number(boot[1])}]",
            ]
        )
    lines.extend(_table(rows))
    lines.append(
        _paragraph(
            "difference: the second model's AUC minus the first's on the same recordings; "
            "an interval that holds 0 says the cohort cannot tell the two models apart."
        )
    )
    baselines = {
        "overall": (comparison.get("overall") or {}).get("baselines") or {},
        "groups": {k: (v or {}).get("baselines") or {} for k, v in named[1:]},
    }
    lines.append("  trivial baselines on the same recordings (model AUC: the first's):")
    groups = {k[len("group ") :]: v for k, v in baselines["groups"].items()}
    lines.extend(_baseline_rows({"overall": baselines["overall"], "groups": groups}))
    return "\n".join(lines)
