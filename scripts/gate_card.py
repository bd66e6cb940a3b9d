"""Print the cough gate's model-card tables (docs/model-card.md#cough-gate) from its
bundle: the designs' brief, coughs refused and non-coughs accepted on the test split
(the previous gate beside the new one), and counting over the long recordings.

    .venv/bin/python scripts/gate_card.py [models/cough-gate]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ml import conditions
from ml.cough_gate import REPORT_FILE
from ml.gate_data import EVAL_ONLY_PREFIX

TARGET = 0.05


def _cell(rate: float) -> str:
    text = f"{rate:.1%}"
    return f"**{text}**" if rate > TARGET else text


def _count(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    k = round(cell["rate"] * cell["n"])
    return f"**{k}/{cell['n']}**" if cell["rate"] > TARGET else f"{k}/{cell['n']}"


def designs(manifest: dict[str, Any]) -> list[str]:
    metrics = manifest["card"]["metrics"]
    head = ("design", "threshold", "validation: per category", "overall", "worst refused",
            "test\\*: laughter", "knocks", "door slams", "throat clearing", "breathing",
            "animals", "all evaluation-only", "coughs refused, worst (ours / \\*)")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, d in metrics["designs"].items():
        v, t = d["validation"], d["test"]
        shown = f"**{name} (shipped)**" if name == metrics["design"] else name
        frac = [f"{t[k][0]}/{t[k][1]}" for k in ("laughter", "door knocks", "door slams",
                                                   "throat clearing", "breathing", "animals",
                                                   "evaluation_only_accepted")]  # fmt: skip
        lines.append(
            f"| {shown} | {d['threshold']:.3f} | {v['non_coughs_accepted_per_category']:.3f} | "
            f"{v['non_coughs_accepted']:.3f} | {v['worst_condition_coughs_refused']:.3f} | "
            + " | ".join(frac)
            + f" | {t['coughs_refused_worst']:.1%} / "
            f"{t['evaluation_only_coughs_refused_worst']:.1%} |"
        )
    return lines


def coughs(report: dict[str, Any], names: dict[str, str]) -> list[str]:
    new, old = report["test"]["coughs_refused"], report["previous"]["test"]["coughs_refused"]
    conds = list(conditions.CONDITIONS)
    lines = ["| coughs refused: previous / new | " + " | ".join(c.replace("_", " ") for c in conds)
             + " |", "|" + "---|" * (len(conds) + 1)]  # fmt: skip
    for source, by in new.items():
        n = max(c["n"] for c in by.values())
        star = "\\*" if source.startswith(EVAL_ONLY_PREFIX) else ""
        cells = [f"{_cell(old[source][c]['rate'])} / {_cell(by[c]['rate'])}" for c in conds]
        lines.append(f"| {names.get(source, source)}{star} ({n}) | " + " | ".join(cells) + " |")
    return lines


def non_coughs(report: dict[str, Any]) -> list[str]:
    new = report["test"]["non_coughs_accepted"]
    old = report["previous"]["test"]["non_coughs_accepted"]
    lines = ["| non-coughs accepted | source | previous | new |", "|---|---|---|---|"]
    for key, cell in new.items():
        category, source = key[:-1].rsplit(" (", 1)
        star = "\\*" if source.startswith(EVAL_ONLY_PREFIX) else ""
        lines.append(f"| {category} | {source}{star} | {_count(old.get(key))} | {_count(cell)} |")
    return lines


def counting(manifest: dict[str, Any]) -> list[str]:
    c = manifest["card"]["counting"]
    head = ("set (4 h each)", "part", "channel", "episode sensitivity", "false positives / h",
            "precision", "event sensitivity", "hourly-rate r", "at the gate's threshold",
            "previous gate")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in c["sets"].items():
        a, g = s["at_threshold"], s["at_gate_threshold"]
        e, ev = a["episodes"], a["events"]
        sens = f"{e['sensitivity']:.3f} ({e['found']}/{e['annotated']})"
        fp = f"{e['false_positives_per_hour']:.2f}"
        old = c.get("previous", {}).get(name)
        lines.append(
            f"| {name} | {s['part']} | {s['set'].get('channel', 'mixed')} | "
            f"{'**' + sens + '**' if e['sensitivity'] < 0.9 else sens} | "
            f"{'**' + fp + '**' if e['false_positives_per_hour'] > 2 else fp} | "
            f"{e['precision']:.3f} | {ev['sensitivity']:.3f} | {a['hourly']['pearson_r']} | "
            f"{g['episodes']['sensitivity']:.3f}, {g['episodes']['false_positives_per_hour']:.1f}/h"
            + (f" | {old['episodes']['sensitivity']:.3f}, "
               f"{old['episodes']['false_positives_per_hour']:.2f}/h |" if old else " | - |")
        )  # fmt: skip
    return lines


def main(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / REPORT_FILE).read_text())
    names = {
        "coswara": "Coswara, own phones",
        "covid19-cough:call-center": "covid19-cough call-center",
        "covid19-cough:telegram": "covid19-cough telegram",
        "eval-dcase2016": "DCASE2016 office coughs",
        "eval-esc50-nc": "ESC-50 coughs",
    }
    for title, lines in (
        ("designs", designs(manifest)),
        ("coughs refused", coughs(report, names)),
        ("non-coughs accepted", non_coughs(report)),
        ("counting", counting(manifest)),
    ):
        print(f"<!-- {title} -->")
        print("\n".join(lines))
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models/cough-gate"))
