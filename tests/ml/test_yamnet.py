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
