"""What a bundle does to a decoded waveform before its backbone sees it.

Recorded in the manifest (``preprocess``) and applied by :class:`Preprocessed`,
the one wrapper that training (``ml.training``, ``scripts/model_selection.py``)
and serving (``ml.model``) both call, so a bundle is always served with the
input it was fitted on. Bundles written before the field existed have none.

* ``telephone_band``: resample to 8 kHz and back, so that a 48 kHz messenger
  recording loses what an 8 kHz phone call never had (everything above 4 kHz);
  both of covid19-cough's sources then look alike in bandwidth.
* ``level``: ``"rms"`` scales each recording to one RMS level, so that how loud a
  call was recorded (positives are louder in covid19-cough's call-center data)
  cannot reach the features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

TELEPHONE_RATE = 8000
LEVELS = ("none", "rms")
# -26 dBFS: about covid19-cough's median recording level, far from clipping for
# speech-like audio (a peak above 1 is kept as it is: YAMNet takes floats).
TARGET_RMS = 0.05
SILENT_RMS = 1e-6


@dataclass(frozen=True)
class Preprocessing:
    telephone_band: bool = False
    level: str = "none"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level normalisation {self.level!r}: use one of {LEVELS}")

    @property
    def is_identity(self) -> bool:
        return not self.telephone_band and self.level == "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Preprocessing:
        data = dict(data or {})
        unknown = set(data) - {"telephone_band", "level"}
        if unknown:
            raise ValueError(f"unknown preprocessing options {sorted(unknown)}")
        return cls(
            telephone_band=bool(data.get("telephone_band", False)),
            level=str(data.get("level", "none")),
        )

    def label(self) -> str:
        """A short name for tables: ``raw``, ``tel``, ``rms``, ``tel+rms``."""
        parts = (["tel"] if self.telephone_band else []) + (["rms"] if self.level == "rms" else [])
        return "+".join(parts) or "raw"

    def apply(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32)
        if self.telephone_band and sample_rate > TELEPHONE_RATE:
            from math import gcd

            from scipy.signal import resample_poly

            g = gcd(sample_rate, TELEPHONE_RATE)
            down = resample_poly(x, TELEPHONE_RATE // g, sample_rate // g)
            x = resample_poly(down, sample_rate // g, TELEPHONE_RATE // g)[: len(x)]
            x = np.pad(x, (0, len(samples) - len(x))).astype(np.float32)
        if self.level == "rms":
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
            if rms > SILENT_RMS:
                x = (x * (TARGET_RMS / rms)).astype(np.float32)
        return x


class Embeds(Protocol):
    name: str

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray: ...


class Preprocessed:
    """A backbone whose every input goes through ``preprocessing`` first."""

    def __init__(self, backbone: Embeds, preprocessing: Preprocessing, sample_rate: int) -> None:
        self.backbone = backbone
        self.preprocessing = preprocessing
        self.sample_rate = sample_rate
        self.name = backbone.name

    def prepare(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.preprocessing.is_identity:
            return list(waveforms)
        return [self.preprocessing.apply(w, self.sample_rate) for w in waveforms]

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        return self.backbone.embed(self.prepare(waveforms))
