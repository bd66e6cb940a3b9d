"""Model selection (issue 12): grouped cross-validation, calibration folded into the
head, the channel probe, preprocessing recorded in the manifest and applied at
serving, and the cough gate's shared YAMNet pass turned off when inputs differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ml.bundle import Head, Manifest, write_bundle
from ml.datasets import Example
from ml.evaluation import channel_probe
from ml.preprocess import TARGET_RMS, Preprocessing
from ml.selection import (
    cv_folds,
    fit_logistic,
    fold_platt,
    logits,
    platt,
    row_space,
    standardiser,
)
from ml.spectrogram import SpectrogramParams
from ml.splits import deduplicate
from shared.audio import decode
from shared.config import PROJECT_ROOT
from tests.conftest import YAMNET_MODEL, require

GATE_BUNDLE = PROJECT_ROOT / "models" / "cough-gate"


def _cohort(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sources = np.array(["phone", "messenger"])[rng.integers(0, 2, n)]
    labels = (rng.random(n) < np.where(sources == "phone", 0.7, 0.3)).astype(np.int64)
    # Some contents twice (same hash, same label, same source), as in the real data.
    groups = np.array([f"h{i}" for i in range(n)])
    groups[1::10] = groups[0::10][: len(groups[1::10])]
    labels[1::10] = labels[0::10][: len(labels[1::10])]
    sources[1::10] = sources[0::10][: len(sources[1::10])]
    return labels, sources, groups


def test_cross_validation_never_splits_a_content_and_keeps_strata() -> None:
    labels, sources, groups = _cohort()
    folds = cv_folds(labels, sources, groups, folds=4, repeats=3, seed=0)
    assert len(folds) == 12
    strata = {(int(y), str(s)) for y, s in zip(labels, sources, strict=True)}
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(train) | set(test) == set(range(len(labels)))
        # Every label x source stratum is on both sides of every fold.
        assert {
            (int(y), str(s)) for y, s in zip(labels[test], sources[test], strict=True)
        } == strata
    # Each repeat covers every recording once as test data, and repeats differ.
    for r in range(3):
        tests = np.concatenate([t for _, t in folds[4 * r : 4 * r + 4]])
        assert sorted(tests.tolist()) == list(range(len(labels)))
    assert not np.array_equal(folds[0][1], folds[4][1])


def test_cross_validation_refuses_a_stratum_too_small_to_split() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    sources = np.array(["a"] * 6 + ["b"])
    with pytest.raises(ValueError, match="at least 2 recordings"):
        cv_folds(labels, sources, [str(i) for i in range(7)])


def test_fitting_in_the_row_space_gives_the_same_logits() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 400))
    y = (x[:, 0] + rng.normal(size=90) > 0).astype(np.int64)
    mean, scale = standardiser(x[:70])
    a, b = (x[:70] - mean) / scale, (x[70:] - mean) / scale
    za, zb = row_space(a, b)
    assert za.shape[1] <= 70
    direct = logits(fit_logistic(a, y[:70], 0.01, standardise=False), b)
    reduced = logits(fit_logistic(za, y[:70], 0.01, standardise=False), zb)
    np.testing.assert_allclose(reduced, direct, atol=2e-3)  # to the optimiser's tolerance


def test_platt_calibration_folded_into_the_head_equals_applying_it_separately() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 6))
    y = (x[:, 0] + 0.5 * rng.normal(size=200) > 0.8).astype(np.int64)
    head = fit_logistic(x, y, 1.0)
    z = logits(head, x)
    a, b = platt(np.stack([z, z + 0.01]), y)
    assert a > 0
    folded = fold_platt(head, a, b)
    separately = 1.0 / (1.0 + np.exp(-(a * z + b)))
    np.testing.assert_allclose(folded.scores(x.astype(np.float32)), separately, atol=1e-5)
    # Balanced weights overstate the rarer label; calibration brings the mean score
    # back to the share of positives.
    assert abs(folded.scores(x.astype(np.float32)).mean() - y.mean()) < abs(
        head.scores(x.astype(np.float32)).mean() - y.mean()
    )


def test_channel_probe_flags_a_score_that_is_just_the_source() -> None:
    labels, sources, _ = _cohort(400, seed=3)
    rng = np.random.default_rng(3)
    channel = np.where(sources == "phone", 0.8, 0.2) + rng.normal(0, 0.05, len(labels))
    probe = channel_probe(labels, np.clip(channel, 0.01, 0.99), sources, seed=0)
    assert probe is not None
    assert probe["score_to_source_auc"] > 0.95 > probe["score_to_label_auc"]
    assert probe["flagged"] and "learned the channel" in probe["message"]
    # A score that follows the label within each source and not the source is not flagged.
    honest = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.1, len(labels)), 0.01, 0.99)
    features = np.column_stack([honest, rng.normal(size=len(labels))])
    fair = channel_probe(labels, honest, sources, features, seed=0)
    assert fair is not None and not fair["flagged"]
    assert fair["features_to_source_auc"] is not None
    assert channel_probe(labels, honest, np.array(["one"] * len(labels))) is None


def test_deduplication_drops_repeats_and_contents_under_both_labels(tmp_path: Path) -> None:
    def ex(name: str, label: int, sha: str) -> Example:
        return Example(tmp_path / name, label, "s", sha * 64)

    rows = [ex("a", 1, "a"), ex("a2", 1, "a"), ex("b", 0, "b"), ex("b2", 1, "b"), ex("c", 0, "c")]
    kept, counts = deduplicate(rows)
    assert [e.name for e in kept] == ["a", "c"]
    assert counts == {
        "rows": 5,
        "distinct_contents": 3,
        "duplicate_rows_dropped": 2,
        "contents_with_both_labels_dropped": 1,
        "rows_with_conflicting_labels": 2,
        "kept": 2,
    }


def test_preprocessing_band_limits_and_levels_the_waveform() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 6000 * t)
    band = Preprocessing(telephone_band=True)
    assert np.std(band.apply(high * 0.5, rate)) < 0.01  # above 4 kHz: gone
    np.testing.assert_allclose(
        band.apply(low * 0.5, rate)[800:-800], low[800:-800] * 0.5, atol=0.02
    )
    level = Preprocessing(level="rms")
    for gain in (0.01, 0.3):
        out = level.apply(low * gain, rate)
        assert np.sqrt(np.mean(out**2)) == pytest.approx(TARGET_RMS, rel=1e-4)
    assert Preprocessing().apply(low, rate) is not None and Preprocessing().is_identity
    with pytest.raises(ValueError, match="level"):
        Preprocessing(level="peak")


def _manifest(preprocess: Preprocessing, features: str = "embedding_mean") -> Manifest:
    return Manifest(
        name="t",
        version="1",
        backbone={"name": "yamnet", "features": features},
        spectrogram=SpectrogramParams(),
        preprocess=preprocess,
        caveat="Research screening tool: within-source AUC 0.55 (near chance).",
        within_source_auc=0.55,
    )


def test_manifest_round_trips_the_new_fields_and_reads_old_bundles() -> None:
    manifest = _manifest(Preprocessing(telephone_band=True, level="rms"))
    again = Manifest.from_dict(manifest.to_dict())
    assert again == manifest
    old = manifest.to_dict()
    for key in ("preprocess", "caveat", "within_source_auc"):
        del old[key]
    legacy = Manifest.from_dict(old)
    assert legacy.preprocess.is_identity
    assert legacy.caveat is None and legacy.within_source_auc is None


def _bundle(root: Path, preprocess: Preprocessing, features: str) -> Path:
    from ml.backbones import YamnetBackbone

    dim = YamnetBackbone(YAMNET_MODEL, features=features).embed([np.zeros(16000, np.float32)])
    rng = np.random.default_rng(0)
    head = Head(
        mean=np.zeros(dim.shape[1], np.float32),
        scale=np.ones(dim.shape[1], np.float32),
        weights=rng.normal(size=dim.shape[1]).astype(np.float32),
        bias=0.0,
    )
    out = root / preprocess.label()
    write_bundle(out, _manifest(preprocess, features), head)
    return out


def test_serving_applies_the_manifest_preprocessing_and_stops_sharing_the_gate_pass(
    tmp_path: Path, cough_files: list[Path]
) -> None:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.model import load_model, shares_yamnet_pass

    gate = load_model(GATE_BUNDLE, yamnet_model=YAMNET_MODEL)
    plain = load_model(
        _bundle(tmp_path, Preprocessing(), "embedding_mean"), yamnet_model=YAMNET_MODEL
    )
    prep = Preprocessing(telephone_band=True, level="rms")
    banded = load_model(
        _bundle(tmp_path, prep, "embedding_mean+embedding_std+acoustic"), yamnet_model=YAMNET_MODEL
    )
    assert shares_yamnet_pass(gate.manifest, plain.manifest)
    assert not shares_yamnet_pass(gate.manifest, banded.manifest)
    assert not shares_yamnet_pass(
        gate.manifest, dataclasses.replace(plain.manifest, preprocess=Preprocessing(level="rms"))
    )

    samples = decode(cough_files[3].read_bytes(), 16000).samples
    # What serving computes is what training computed: the backbone on the
    # preprocessed waveform, which differs from the raw one's.
    expected = banded.backbone.embed([prep.apply(samples, 16000)])
    np.testing.assert_array_equal(banded.embed([samples]), expected)
    assert not np.allclose(banded.backbone.embed([samples]), expected)

    # The worker's order: the gate, then the diagnosis model, on the same clip.
    yamnet = gate.backbone.yamnet  # type: ignore[attr-defined]
    for model, passes in ((plain, 1), (banded, 2)):
        clip = samples[: len(samples) - passes]  # a clip YAMNet has not seen yet
        before = yamnet.passes
        gate.predict([clip])
        model.predict([clip])
        assert yamnet.passes - before == passes


def test_research_columns_are_the_bundle_features(cough_files: list[Path]) -> None:
    """scripts/model_selection.py slices one all-pooled vector; a bundle naming a
    subset computes exactly those columns."""
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.backbones import ALL_POOLED, YamnetBackbone, pooled_columns

    samples = [decode(f.read_bytes(), 16000).samples for f in cough_files[:2]]
    everything = YamnetBackbone(YAMNET_MODEL, features=ALL_POOLED).embed(samples)
    subset = "embedding_mean+scores_max+acoustic"
    where = pooled_columns(ALL_POOLED)
    expected = np.hstack([everything[:, where[p]] for p in subset.split("+")])
    np.testing.assert_array_equal(
        YamnetBackbone(YAMNET_MODEL, features=subset).embed(samples), expected
    )
