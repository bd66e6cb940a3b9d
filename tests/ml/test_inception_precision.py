"""The Inception V3 backbone cut at mixed8 (real ImageNet weights, shared/models) and its
reduced-precision path (TFLite, dynamic-range int8): the int8 path computes nearly the
fp32 features on real clips, and the manifest's ``precision`` picks the path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ml.bundle import BundleError, Head, Manifest, read_manifest, write_bundle
from ml.spectrogram import SpectrogramParams
from shared.audio import decode
from tests.conftest import SHARED_DIR, require

MIXED8_WEIGHTS = SHARED_DIR / "models" / "inception_v3_imagenet_to_mixed8.weights.h5"
CLIPS = 6

# Tolerances, from the drift measured over all 978 distinct clips of covid19-cough
# (fp32 and int8 feature caches of `tussis train`), with a margin. Dynamic-range
# int8 rounds each weight to 1/127 of its channel's range and each activation to
# 1/255 of its tensor's range; through the stem and nine mixed blocks the pooled features end
# at cosine >= 0.992 (median 0.997) to fp32 and relative L2 error <= 0.126
# (median 0.078). The trained head's probability moves by 0.012 (median), 0.05
# (99th percentile); one clip near 0.5, where the sigmoid is steepest, by 0.31, so
# the per-clip bound below is for a head whose scores sit away from 0.5, as this
# test's does (~0.12 / ~0.88; measured change <= 0.013). A wrong input (scaling,
# orientation), a wrong layer or random weights breaks these by far.
MIN_COSINE = 0.985
MAX_RELATIVE_L2 = 0.2
MAX_SCORE_CHANGE = 0.05


@dataclass
class Paths:
    fp32: object  # InceptionV3Backbone (imported lazily: TensorFlow)
    int8: object  # InceptionTFLiteBackbone
    waves: list[np.ndarray]
    fp32_features: np.ndarray
    int8_features: np.ndarray
    head: Head


def _head_for(features: np.ndarray, labels: np.ndarray) -> Head:
    """A ridge-regression head on standardised features: a real linear function of all
    1,280 features (as a trained head is), without a Keras fit in the test."""
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-3
    z = (features - mean) / scale
    target = np.where(labels == 1, 2.0, -2.0)
    weights = np.linalg.solve(z.T @ z + 10.0 * np.eye(z.shape[1]), z.T @ target)
    return Head(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=weights.astype(np.float32),
        bias=0.0,
    )


@pytest.fixture(scope="module")
def paths(cough_files: list[Path], cough_metadata: list[dict]) -> Paths:
    require(MIXED8_WEIGHTS.is_file(), f"no Inception V3 mixed8 weights at {MIXED8_WEIGHTS}")
    from ml.backbones import InceptionTFLiteBackbone, InceptionV3Backbone, convert_int8_dynamic

    params = SpectrogramParams()
    fp32 = InceptionV3Backbone(params, weights=str(MIXED8_WEIGHTS), threads=2, layer="mixed8")
    int8 = InceptionTFLiteBackbone(params, convert_int8_dynamic(fp32), threads=2)
    covid = {m["filename"]: bool(m["covid19"]) for m in cough_metadata}
    # Both labels, so that the head below has something to separate.
    positives = [f for f in cough_files if covid[f.name]][: CLIPS // 2]
    negatives = [f for f in cough_files if not covid[f.name]][: CLIPS // 2]
    files = positives + negatives
    waves = [decode(f.read_bytes(), params.sample_rate).samples for f in files]
    fp32_features, int8_features = fp32.embed(waves), int8.embed(waves)
    labels = np.array([covid[f.name] for f in files], dtype=np.int64)
    head = _head_for(fp32_features, labels)
    return Paths(fp32, int8, waves, fp32_features, int8_features, head)


def test_int8_features_and_scores_stay_close_to_fp32(paths: Paths) -> None:
    a, b = paths.fp32_features, paths.int8_features
    assert a.shape == b.shape == (CLIPS, 1280)
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert cosine.min() >= MIN_COSINE, cosine
    assert relative.max() <= MAX_RELATIVE_L2, relative
    # The features are not trivially alike (what random weights would give).
    assert np.corrcoef(a)[np.triu_indices(CLIPS, 1)].min() < 0.99
    fp32_scores = paths.head.scores(a)
    assert np.ptp(fp32_scores) >= 0.5, fp32_scores  # the head does separate the clips
    change = np.abs(fp32_scores - paths.head.scores(b))
    assert change.max() <= MAX_SCORE_CHANGE, change
    # One clip at a time or all at once: the same int8 features.
    np.testing.assert_allclose(paths.int8.embed(paths.waves[:1])[0], b[0], rtol=1e-5, atol=1e-5)


def _bundle(path: Path, backbone: dict, head: Head) -> Path:
    manifest = Manifest(
        name=path.name, version="0.0.1", backbone=backbone, spectrogram=SpectrogramParams()
    )
    write_bundle(path, manifest, head)
    return path


def test_manifest_precision_is_honoured(paths: Paths, tmp_path: Path) -> None:
    from ml.backbones import InceptionTFLiteBackbone, InceptionV3Backbone
    from ml.model import load_model

    int8_dir = tmp_path / "int8"
    int8_dir.mkdir()
    spec = {"name": "inception_v3", "weights": "bundle", "layer": "mixed8"}
    file = paths.int8.save_weights(int8_dir)  # type: ignore[attr-defined]
    _bundle(int8_dir, {**spec, "precision": "int8-dynamic", "file": file}, paths.head)
    model = load_model(int8_dir, threads=1)
    assert isinstance(model.backbone, InceptionTFLiteBackbone)
    assert model.manifest.precision == "int8-dynamic"
    np.testing.assert_allclose(
        model.scores(paths.waves[:2]), paths.head.scores(paths.int8_features[:2]), atol=1e-5
    )

    fp32_dir = tmp_path / "fp32"
    fp32_dir.mkdir()
    file = paths.fp32.save_weights(fp32_dir)  # type: ignore[attr-defined]
    _bundle(fp32_dir, {**spec, "precision": "fp32", "file": file}, paths.head)
    model = load_model(fp32_dir, threads=1)
    assert isinstance(model.backbone, InceptionV3Backbone) and model.backbone.layer == "mixed8"
    np.testing.assert_allclose(
        model.backbone.embed(paths.waves[:2]), paths.fp32_features[:2], rtol=1e-4, atol=1e-4
    )

    # An unknown precision is refused when the manifest is read (the worker's
    # parent checks bundles this way, without TensorFlow), naming what is known.
    data = json.loads((int8_dir / "manifest.json").read_text())
    data["backbone"]["precision"] = "int4"
    (int8_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"precision 'int4'.*'fp32' or 'int8-dynamic'"):
        read_manifest(int8_dir)
    with pytest.raises(BundleError, match="precision 'int4'"):
        load_model(int8_dir)

    # int8 without its converted file in the bundle: refused, not converted on the fly.
    data["backbone"]["precision"] = "int8-dynamic"
    (int8_dir / "manifest.json").write_text(json.dumps(data))
    (int8_dir / data["backbone"]["file"]).unlink()
    with pytest.raises(BundleError, match="lacks its backbone weights"):
        load_model(int8_dir)
    data["backbone"]["weights"] = "imagenet"
    (int8_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="ships its converted backbone"):
        load_model(int8_dir)
