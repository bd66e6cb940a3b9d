"""Model bundles: loading, validation and clear failures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ml.bundle import BundleError, read_manifest
from shared.audio import decode
from shared.config import PROJECT_ROOT
from tests.conftest import SHARED_DIR, base_settings, require
from tests.stack import BIN, settings_env


def test_tiny_bundle_predicts_deterministically(tiny_bundle: Path, cough_files: list[Path]) -> None:
    from ml.model import load_model

    model = load_model(tiny_bundle)
    assert (model.id, model.version, model.sample_rate) == ("tiny-test", "0.0.1", 16000)
    waves = [decode(f.read_bytes(), 16000).samples for f in cough_files[20:24]]
    batch = model.predict(waves)
    one_by_one = [model.predict([w])[0] for w in waves]
    for a, b in zip(batch, one_by_one, strict=True):
        assert 0.0 <= a.score <= 1.0
        assert a.score == pytest.approx(b.score, abs=1e-5)  # per-clip rendering: batch-invariant
        assert a.diagnosis == ("sick" if a.score >= model.manifest.threshold else "not sick")
    # Training fitted the head on these: it separates its own training clips.
    manifest = read_manifest(tiny_bundle)
    assert manifest.backbone == {
        "name": "inception_v3",
        "weights": "bundle",
        "file": "backbone.weights.h5",
    }


def test_bundle_errors_are_explicit(tmp_path: Path, tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle"):
        read_manifest(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken, ignore=shutil.ignore_patterns("*.h5"))
    data = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**data, "threshold": 1.5}))
    with pytest.raises(BundleError, match="threshold"):
        read_manifest(broken)
    (broken / "manifest.json").write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(BundleError, match="format"):
        read_manifest(broken)
    (broken / "manifest.json").write_text(json.dumps(data))
    from ml.model import load_model

    with pytest.raises(BundleError, match="backbone weights"):
        load_model(broken)


def test_imagenet_bundle_without_weights_is_refused_clearly(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    from ml.model import ModelUnavailable, load_model

    bundle = tmp_path / "imagenet"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("*.h5"))
    data = json.loads((bundle / "manifest.json").read_text())
    data["backbone"] = {"name": "inception_v3", "weights": "imagenet"}
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelUnavailable, match="TUSSIS_INCEPTION_WEIGHTS"):
        load_model(bundle, inception_weights=str(tmp_path / "absent.h5"))


def test_worker_refuses_to_start_without_a_bundle(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, model_bundle=tmp_path / "nowhere")
    out = subprocess.run(
        [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "no model bundle" in out.stderr + out.stdout
    assert "TUSSIS_MODEL_BUNDLES" in out.stderr + out.stdout


def test_training_head_separates_its_training_data() -> None:
    from ml.selection import fit_logistic

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (60, 5)), rng.normal(1.5, 1, (20, 5))]).astype(np.float32)
    labels = np.array([0] * 60 + [1] * 20)
    head = fit_logistic(x, labels, c=1.0)
    scores = head.scores(x)
    assert scores[labels == 1].mean() > 0.6 > 0.4 > scores[labels == 0].mean()
    # Balanced class weights: the minority label is not drowned by the majority.
    assert (scores[labels == 1] >= 0.5).mean() > 0.7


INCEPTION_BUNDLE = PROJECT_ROOT / "models" / "inception"
INCEPTION_WEIGHTS = SHARED_DIR / "models" / "inception_v3_imagenet_to_mixed8.weights.h5"


def test_shipped_inception_bundle_references_the_shared_backbone(
    cough_files: list[Path],
) -> None:
    """models/inception carries no copy of the 43 MB backbone: its manifest names
    ../shared's file by a path relative to the bundle and by its sha256, and the
    loader finds, checks and uses exactly that file."""
    require(INCEPTION_WEIGHTS.is_file(), f"no Inception weights at {INCEPTION_WEIGHTS}")
    from ml.backbones import InceptionV3Backbone
    from ml.model import load_model
    from ml.yamnet import sha256_of

    manifest = read_manifest(INCEPTION_BUNDLE)
    backbone = manifest.backbone
    assert (backbone["name"], backbone["layer"], backbone["weights"]) == (
        "inception_v3",
        "mixed8",
        "pretrained",
    )
    assert not list(INCEPTION_BUNDLE.glob("*.h5")) and not list(INCEPTION_BUNDLE.glob("*.tflite"))
    pretrained = backbone["pretrained"]
    assert (INCEPTION_BUNDLE / pretrained["path"]).resolve() == INCEPTION_WEIGHTS.resolve()
    assert pretrained["sha256"] == sha256_of(INCEPTION_WEIGHTS)
    assert pretrained["sha256"] == (
        "d110479ff59b50f981203eb7e6c5e2a842a9c9435ee547462f086f7b91b98409"
    )  # ../shared/models/INCEPTION.md

    model = load_model(INCEPTION_BUNDLE, threads=1)
    assert isinstance(model.backbone, InceptionV3Backbone) and model.backbone.layer == "mixed8"
    assert (model.id, model.version) == ("tussis-inception-covid19", manifest.version)
    waves = [decode(f.read_bytes(), model.sample_rate).samples for f in cough_files[:6]]
    features = model.embed(waves)
    assert features.shape == (6, 1280)
    # Pretrained features tell clips apart; a randomly initialised network maps
    # everything to near-identical vectors (INCEPTION.md: cosine 0.97-0.99).
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert (unit @ unit.T)[np.triu_indices(6, 1)].min() < 0.97
    scores = [p.score for p in model.predict(waves)]
    assert all(0.0 <= s <= 1.0 for s in scores) and np.ptp(scores) > 0.01


def test_referenced_backbone_missing_or_different_is_refused(tmp_path: Path) -> None:
    """A bundle whose referenced backbone file is gone, or is another file, is refused
    with a message naming the path and the digests, before TensorFlow builds anything."""
    from ml.model import ModelUnavailable, load_model

    bundle = tmp_path / "inception"
    shutil.copytree(INCEPTION_BUNDLE, bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    expected = data["backbone"]["pretrained"]["sha256"]

    data["backbone"]["pretrained"]["path"] = "absent.weights.h5"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelUnavailable, match=rf"{expected}.*not found at .*absent\.weights\.h5"):
        load_model(bundle)

    other = bundle / "other.weights.h5"
    other.write_bytes(b"not the weights")
    data["backbone"]["pretrained"]["path"] = other.name
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"sha256 {expected}.*other\.weights\.h5.*refused"):
        load_model(bundle)
    # TUSSIS_INCEPTION_WEIGHTS, when it names a cut network's file, replaces the path:
    # checked against the same digest.
    with pytest.raises(BundleError, match=r"from TUSSIS_INCEPTION_WEIGHTS.*refused"):
        load_model(bundle, inception_weights=str(tmp_path / "inception" / "other.weights.h5"))

    del data["backbone"]["pretrained"]["sha256"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"no backbone\.pretrained\.sha256"):
        load_model(bundle)
