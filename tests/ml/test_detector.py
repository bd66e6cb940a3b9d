"""The cough detector's per-window designs (ml/detector.py): YAMNet's class evidence
grouped by the ontology, the confuser veto, the anchor to YAMNet's own Cough, the
sign-constrained head, and a detector bundle served through ``ml.model``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import detector, yamnet
from ml.bundle import BundleError, Head, Manifest, write_manifest
from ml.detector import GROUP_NAMES, VETOED, WindowDetector
from ml.spectrogram import SpectrogramParams
from tests.conftest import YAMNET_MODEL, require

WIDTH = detector.EMBEDDING + 521


def _rows(n: int, seed: int = 0) -> np.ndarray:
    """Window rows: an embedding, then every class logit low (about p = 0.0001)."""
    rng = np.random.default_rng(seed)
    rows = np.full((n, WIDTH), -9.0, np.float32)
    rows[:, : detector.EMBEDDING] = rng.standard_normal((n, detector.EMBEDDING)) * 0.1
    return rows


def _logit(class_index: int) -> int:
    return detector.EMBEDDING + class_index


def test_groups_take_their_strongest_class_and_dominance_is_over_cough() -> None:
    rows = _rows(2)
    rows[0, _logit(353)] = 2.0  # Knock
    rows[0, _logit(yamnet.COUGH)] = -1.0
    rows[1, _logit(13)] = 0.5  # Laughter
    groups = detector.group_logits(rows)
    knocks = GROUP_NAMES.index("doors and knocks")
    laughter = GROUP_NAMES.index("laughter")
    assert groups[0, knocks] == 2.0 and groups[1, laughter] == 0.5
    dom = detector.dominance(rows)
    assert dom[0, knocks] == pytest.approx(3.0) and dom[1, laughter] == pytest.approx(9.5)
    # Every AudioSet class belongs to exactly one group.
    classes = sorted(c for members, _ in detector.GROUPS.values() for c in members)
    assert classes == list(range(521))


def _native() -> Head:
    weights = np.zeros(WIDTH)
    weights[detector.COUGH_COLUMN] = 1.0
    return Head(np.zeros(WIDTH), np.ones(WIDTH), weights, 0.0)


def test_a_window_whose_confuser_clearly_dominates_is_vetoed() -> None:
    margins = np.full(len(GROUP_NAMES), np.inf)
    margins[GROUP_NAMES.index("doors and knocks")] = 4.0
    vetoing = WindowDetector("native + veto", _native(), veto=margins)
    rows = _rows(3)
    rows[:, detector.COUGH_COLUMN] = 1.0  # YAMNet: cough, p = 0.73
    rows[1, _logit(353)] = 4.5  # ... but knock 3.5 above it: under the margin
    rows[2, _logit(353)] = 5.5  # ... knock 4.5 above it: vetoed
    plain = WindowDetector("native", _native()).scores(rows)
    scores = vetoing.scores(rows)
    assert scores[0] == pytest.approx(plain[0]) and scores[1] == pytest.approx(plain[1])
    assert scores[2] == pytest.approx(plain[2] * VETOED)
    assert vetoing.vetoed(rows).tolist() == [False, False, True]


def test_the_anchor_caps_the_head_at_yamnets_own_cough_plus_the_cap() -> None:
    weights = np.zeros(WIDTH)
    weights[0] = 1.0  # a learned head that follows one embedding column
    head = Head(np.zeros(WIDTH), np.ones(WIDTH), weights, 5.0)
    anchored = WindowDetector("anchored", head, cap=3.0)
    rows = _rows(2)
    rows[:, 0] = 0.0
    rows[0, detector.COUGH_COLUMN] = -9.0  # YAMNet: no cough at all -> logit at most -6
    rows[1, detector.COUGH_COLUMN] = 4.0  # YAMNet: cough -> the head's own 5 stands
    assert anchored.logits(rows).tolist() == pytest.approx([-6.0, 5.0])


def test_the_constrained_head_keeps_each_weights_sign() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 3))
    # The label rises with columns 0 and 1: unconstrained, both weights are positive.
    y = (x[:, 0] + x[:, 1] + 0.3 * rng.standard_normal(2000) > 0).astype(float)
    free = detector.fit_constrained_logistic(x, y, np.array([0, 0, 0]), 1e-3)
    assert free.weights[0] > 1 and free.weights[1] > 1
    kept = detector.fit_constrained_logistic(x, y, np.array([+1, -1, 0]), 1e-3)
    assert kept.weights[0] > 1 and kept.weights[1] == 0.0  # may not rise with column 1
    assert np.mean((kept.scores(x) > 0.5) == y) > 0.7


def test_veto_margins_spare_every_training_cough_window() -> None:
    coughs = _rows(50)
    coughs[:, detector.COUGH_COLUMN] = 2.0
    coughs[:, _logit(132)] = np.linspace(-5, 5, 50)  # Music, up to 3 above Cough
    margins = detector.veto_margins(coughs, ("music",), 1.0)
    assert np.isinf(np.delete(margins, GROUP_NAMES.index("music"))).all()
    assert not WindowDetector("v", _native(), veto=margins).vetoed(coughs).any()


@pytest.mark.parametrize("kind", ["features", "groups", "veto and cap"])
def test_a_saved_detector_scores_as_it_did(tmp_path: Path, kind: str) -> None:
    rows = _rows(20, seed=3)
    rows[:, detector.EMBEDDING :] = np.random.default_rng(4).uniform(-9, 9, (20, 521))
    rng = np.random.default_rng(5)
    if kind == "groups":
        k = 4
        head = Head(np.zeros(len(GROUP_NAMES) + k), np.ones(len(GROUP_NAMES) + k),
                    rng.standard_normal(len(GROUP_NAMES) + k), -1.0)  # fmt: skip
        made = WindowDetector(
            "groups",
            head,
            inputs="groups",
            components=rng.standard_normal((k, detector.EMBEDDING)).astype(np.float32),
            component_mean=rng.standard_normal(detector.EMBEDDING).astype(np.float32),
        )
    else:
        head = Head(np.zeros(WIDTH), np.ones(WIDTH), rng.standard_normal(WIDTH) * 0.05, 0.3)
        margins = np.full(len(GROUP_NAMES), np.inf)
        margins[GROUP_NAMES.index("animals")] = 1.0
        made = (
            WindowDetector("plain", head)
            if kind == "features"
            else WindowDetector("both", head, veto=margins, cap=2.0)
        )
    made.save(tmp_path / "detector.npz")
    loaded = WindowDetector.load(tmp_path / "detector.npz")
    assert loaded.design == made.design
    np.testing.assert_allclose(loaded.scores(rows), made.scores(rows), rtol=1e-6, atol=1e-12)


def test_a_detector_bundle_is_served_through_the_model(tmp_path: Path, cough_file: Path) -> None:
    """What the worker loads (ml.model.load_model) from a bundle naming a detector:
    YAMNet's own Cough class as a design, scored on a real cough, window by window."""
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.backbones import WINDOW_FEATURES, shared_yamnet
    from ml.model import load_model
    from shared.audio import decode

    bundle = tmp_path / "gate"
    bundle.mkdir()
    WindowDetector("native", _native()).save(bundle / "detector.npz")
    manifest = Manifest(
        name="native-cough",
        version="test",
        backbone={
            "name": "yamnet",
            "features": WINDOW_FEATURES,
            "pooling": "max",
            "detector": "native",
        },
        spectrogram=SpectrogramParams(),
        labels=("no cough", "cough"),
        threshold=0.5,
        head="detector.npz",
        counting_threshold=0.7,
    )
    write_manifest(bundle, manifest)
    gate = load_model(bundle, yamnet_model=YAMNET_MODEL)
    samples = decode(cough_file.read_bytes(), 16000).samples
    native = shared_yamnet(YAMNET_MODEL).run(samples).scores[:, yamnet.COUGH]
    expected = np.clip(native, 1e-4, 1 - 1e-4)  # the rows hold clipped logits
    np.testing.assert_allclose(gate.window_scores(samples), expected, rtol=1e-4)
    assert gate.manifest.event_threshold == 0.7
    verdict = gate.predict([samples])[0]
    assert verdict.score == pytest.approx(float(expected.max()), rel=1e-4)


def test_the_wideband_veto_fires_only_on_wideband_windows() -> None:
    margins = np.full(len(GROUP_NAMES), np.inf)
    margins[GROUP_NAMES.index("laughter")] = 2.0
    made = WindowDetector("w", _native(), wideband_veto=margins, wideband_db=-35.0)
    rows = np.hstack([_rows(3), np.zeros((3, 1), np.float32)])
    rows[:, detector.COUGH_COLUMN] = 1.0
    rows[:, _logit(13)] = 4.0  # Laughter 3 above Cough: over the margin
    rows[:, detector.BAND_COLUMN] = [-20.0, -35.0, -60.0]  # wideband, at the edge, phone
    assert made.vetoed(rows).tolist() == [True, True, False]
    with pytest.raises(BundleError, match="band column"):
        made.vetoed(rows[:, : detector.BAND_COLUMN])
