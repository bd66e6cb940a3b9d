"""A deterministic held-out test split, stratified by label and source, and the
deduplication that comes before it. (Model choices use cross-validation folds on
the rest: ml/selection.py.)

Files are split by content hash, so a recording present twice never lands on
both sides of a split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ml.datasets import Example

SPLITS = ("train", "test")


def stratified_split(
    examples: Sequence[Example], test_fraction: float, seed: int
) -> dict[str, list[Example]]:
    by_hash: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_hash[ex.sha256].append(ex)
    strata: dict[tuple[int, str], list[str]] = defaultdict(list)
    for sha, group in sorted(by_hash.items()):
        first = group[0]
        strata[(first.label, first.source)].append(sha)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for key in sorted(strata):
        hashes = list(strata[key])
        rng.shuffle(hashes)
        n_test = round(len(hashes) * test_fraction)
        for i, sha in enumerate(hashes):
            assignment[sha] = "test" if i < n_test else "train"
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex in examples:
        out[assignment[ex.sha256]].append(ex)
    return out


def deduplicate(examples: Sequence[Example]) -> tuple[list[Example], dict[str, int]]:
    """One example per distinct content; contents that carry both labels dropped.

    Byte-identical files under both labels say nothing about either label, and a
    file kept twice would weigh double and could sit on both sides of a fold.
    """
    by_hash: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_hash[ex.sha256].append(ex)
    kept, conflicting = [], 0
    conflicting_rows = 0
    for group in by_hash.values():
        if len({ex.label for ex in group}) > 1:
            conflicting += 1
            conflicting_rows += len(group)
            continue
        kept.append(group[0])
    return kept, {
        "rows": len(examples),
        "distinct_contents": len(by_hash),
        "duplicate_rows_dropped": len(examples) - len(by_hash),
        "contents_with_both_labels_dropped": conflicting,
        "rows_with_conflicting_labels": conflicting_rows,
        "kept": len(kept),
    }
