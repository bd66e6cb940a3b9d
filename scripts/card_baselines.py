"""The model card's trivial baselines beside each shipped diagnosis bundle.

Prints, for each bundle (default: models/default and models/inception), the ROC
AUC on its held-out test split (from its card) overall and within each source,
beside three numbers that say nothing about a cough: the clip's duration, its
active share (the share of 32 ms frames within 30 dB of its loudest) and its RMS
level (dBFS). Each single number is a score as it is, no fitting; its direction
(higher or lower means positive) is chosen on the bundle's cross-validation part
within each group, and the AUC is measured on the test split only.

    .venv/bin/python scripts/card_baselines.py [BUNDLE ...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml.bundle import SPLIT_FILE, read_manifest  # noqa: E402
from ml.datasets import load_dataset  # noqa: E402
from ml.features import load_waveform  # noqa: E402
from ml.splits import deduplicate  # noqa: E402
from shared.metrics import roc_auc  # noqa: E402

SHARED = Path(os.environ.get("TUSSIS_SHARED_DIR", ROOT.parent / "shared"))
BASELINES = ("duration", "active share (-30 dB)", "RMS level")


def trivial(samples: np.ndarray, rate: int) -> np.ndarray:
    import librosa

    from ml.acoustic import FRAME, HOP

    x = np.asarray(samples, dtype=np.float32)
    padded = np.pad(x, (0, max(0, FRAME - len(x))))
    rms = librosa.feature.rms(y=padded, frame_length=FRAME, hop_length=HOP)[0]
    rms_db = 20 * np.log10(np.maximum(rms, 1e-8))
    level = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return np.array(
        [
            len(x) / rate,
            float((rms_db >= rms_db.max() - 30.0).mean()),
            20 * np.log10(max(level, 1e-8)),
        ]
    )


def main() -> None:
    bundles = [Path(a) for a in sys.argv[1:]] or [
        ROOT / "models" / "default",
        ROOT / "models" / "inception",
    ]
    kept, _ = deduplicate(load_dataset(SHARED / "data" / "covid19-cough"))
    by_hash = {ex.sha256: ex for ex in kept}
    cache: dict[str, np.ndarray | None] = {}

    def values(hashes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, labels, sources = [], [], []
        for h in hashes:
            ex = by_hash.get(h)
            if ex is None:
                continue
            if h not in cache:
                try:
                    cache[h] = trivial(load_waveform(ex.path, 16000), 16000)
                except Exception:  # unusable recordings are left out, as training does
                    cache[h] = None
            if cache[h] is not None:
                rows.append(cache[h])
                labels.append(ex.label)
                sources.append(ex.source)
        return np.array(rows), np.array(labels), np.array(sources)

    for bundle in bundles:
        manifest = read_manifest(bundle)
        split = json.loads((bundle / SPLIT_FILE).read_text())
        cv_x, cv_y, cv_s = values(split["train"])
        te_x, te_y, te_s = values(split["test"])
        metrics = manifest.card["metrics"]
        print(f"{manifest.name} {manifest.version}: test split, ROC AUC")
        print(f"  {'group':<12} {'n':>4} {'model':>6}  " + "  ".join(f"{b:>21}" for b in BASELINES))
        for group in ("overall", "call-center", "telegram"):
            model = metrics["overall"] if group == "overall" else metrics["by_source"][group]
            cv = np.ones(len(cv_y), bool) if group == "overall" else cv_s == group
            te = np.ones(len(te_y), bool) if group == "overall" else te_s == group
            cells: list[float] = []
            for j in range(len(BASELINES)):
                chosen = roc_auc(cv_y[cv], cv_x[cv, j])
                sign = 1.0 if chosen is None or chosen >= 0.5 else -1.0
                measured = roc_auc(te_y[te], sign * te_x[te, j])
                cells.append(float("nan") if measured is None else measured)
            flag = "" if model["auc"] > max(cells) else "   <- not above a trivial baseline"
            print(
                f"  {group:<12} {te.sum():>4} {model['auc']:6.3f}  "
                + "  ".join(f"{c:21.3f}" for c in cells)
                + flag
            )
        print()


if __name__ == "__main__":
    main()
