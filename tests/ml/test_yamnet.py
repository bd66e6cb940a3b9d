"""Getting the YAMNet file: a missing copy is fetched once and checked against its digest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.yamnet import (
    HOP,
    SHA256,
    WINDOW,
    YamnetUnavailable,
    ensure_model_file,
    frame,
    sha256_of,
)
from tests.conftest import YAMNET_MODEL, require


def test_the_team_copy_has_the_pinned_digest() -> None:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    assert sha256_of(YAMNET_MODEL) == SHA256


def test_missing_model_is_downloaded_and_verified(tmp_path: Path) -> None:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    target = tmp_path / "cache" / "yamnet.tflite"
    assert ensure_model_file(target, url=YAMNET_MODEL.as_uri()) == target
    assert sha256_of(target) == SHA256
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".yamnet-")]


def test_a_download_with_the_wrong_digest_is_refused(tmp_path: Path) -> None:
    impostor = tmp_path / "other.tflite"
    impostor.write_bytes(b"not yamnet")
    target = tmp_path / "cache" / "yamnet.tflite"
    with pytest.raises(YamnetUnavailable, match="expected"):
        ensure_model_file(target, url=impostor.as_uri())
    assert not target.exists()


def test_an_unreachable_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(YamnetUnavailable, match="TUSSIS_YAMNET_MODEL"):
        ensure_model_file(tmp_path / "y.tflite", url=(tmp_path / "absent").as_uri())


def test_framing_covers_the_clip_in_975_ms_windows() -> None:
    assert frame(np.zeros(100, np.float32)).shape == (1, WINDOW)  # padded to one window
    windows = frame(np.arange(WINDOW + 3 * HOP, dtype=np.float32))
    assert windows.shape == (4, WINDOW)
    assert windows[1, 0] == HOP


def test_the_gate_and_a_yamnet_model_share_one_pass_per_clip() -> None:
    """Two bundles on the same YAMNet file: one network pass per clip, the same
    answers as separate passes, and a changed clip is never served from memory."""
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.model import load_model
    from shared.config import PROJECT_ROOT

    gate = load_model(PROJECT_ROOT / "models" / "cough-gate", yamnet_model=YAMNET_MODEL)
    model = load_model(PROJECT_ROOT / "models" / "default", yamnet_model=YAMNET_MODEL)
    yamnet = gate.backbone.yamnet  # type: ignore[attr-defined]
    assert model.backbone.yamnet is yamnet  # type: ignore[attr-defined]
    rng = np.random.default_rng(7)
    clips = [(rng.standard_normal(16000 * (i + 1)) * 0.1).astype(np.float32) for i in range(3)]
    before = yamnet.passes
    verdicts = gate.predict(clips)
    predictions = model.predict([c.copy() for c in clips])  # equal content, other arrays
    assert yamnet.passes - before == len(clips)
    yamnet.forget()
    assert [p.score for p in model.predict(clips)] == [p.score for p in predictions]
    assert [v.score for v in gate.predict(clips)] == [v.score for v in verdicts]
    changed = clips[0].copy()
    changed[100] += 0.5
    before = yamnet.passes
    gate.predict([changed])
    assert yamnet.passes - before == 1
    with pytest.raises(ValueError):
        yamnet.run(clips[1]).scores[0, 0] = 1.0  # shared outputs are read-only


def test_the_declared_embedding_output_equals_the_intermediate_tensor() -> None:
    """The embedding read as a declared output (no preserve-all-tensors) is the very
    tensor the published graph computes, on the same runtime (LiteRT)."""
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ai_edge_litert.interpreter import Interpreter

    from ml.yamnet import EMBEDDING_TENSOR, Yamnet

    clip = np.random.default_rng(7).normal(0, 0.1, WINDOW + 2 * HOP).astype(np.float32)
    out = Yamnet(YAMNET_MODEL).run(clip)
    reference = Interpreter(
        model_path=str(YAMNET_MODEL), experimental_preserve_all_tensors=True, num_threads=1
    )
    reference.allocate_tensors()
    tensors = {d["name"]: d["index"] for d in reference.get_tensor_details()}
    scores = reference.get_output_details()[0]["index"]
    for i, window in enumerate(frame(clip)):
        reference.set_tensor(reference.get_input_details()[0]["index"], window[np.newaxis])
        reference.invoke()
        np.testing.assert_allclose(
            out.embeddings[i],
            reference.get_tensor(tensors[EMBEDDING_TENSOR]).reshape(-1),
            atol=1e-6,
        )
        np.testing.assert_allclose(out.scores[i], reference.get_tensor(scores)[0], atol=1e-6)
