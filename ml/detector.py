"""The cough detector's per-window model: what scores each YAMNet window (0.975 s
every 0.48 s) for "a cough is here", from the outputs of the one YAMNet pass the
worker makes anyway (the 1,024-d embedding and the 521 AudioSet class scores).

YAMNet's AudioSet head was trained on about two million labelled clips and has
classes for the sounds a cough detector confuses (laughter, throat clearing,
knocks, claps, music, animals...). A head fitted on a few hundred recordings can
override that knowledge, and the previous gate did: it accepted almost every laugh.
The designs here keep it in three ways, and ``ml.cough_gate`` fits each of them,
chooses one on its validation split and reports all of them:

- a **class-logit head**: a logistic head whose inputs are the native logits of
  AudioSet's classes, grouped by the ontology (:data:`GROUPS`), with the sign of
  each group's weight fixed (evidence for a confuser can only lower the score),
  plus a few principal components of the embedding as the only learned features;
- a **confuser veto**: a window whose strongest confuser group outscores YAMNet's
  own ``Cough`` by more than that group's margin is not a cough, whatever the
  learned head says. The margins come from the training coughs' own windows
  (a quantile), never from a non-cough recording;
- an **anchored head**: the learned head's logit may exceed YAMNet's ``Cough``
  logit by at most a fixed amount.

A window's score depends on that window (and, for heads with recording context,
on the audio passed in the same call), never on a second YAMNet pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml import yamnet
from ml.backbones import with_context
from ml.bundle import BundleError, Head

EMBEDDING = 1024  # the first columns of a window row (ml.backbones.window_features)
COUGH_COLUMN = EMBEDDING + yamnet.COUGH
YAMNET_COLUMNS = EMBEDDING + 521  # embedding and class logits: what a head sees
# With ml.backbones.BAND_FEATURES, the column after them: the window's event power
# above 4 kHz over its power at 300-3,400 Hz, dB (ml.bandwidth.high_share).
BAND_COLUMN = YAMNET_COLUMNS


def _span(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


# AudioSet's classes grouped by the ontology (yamnet_class_map.csv), each with the
# sign its weight may take in a class-logit head: +1 evidence for a cough, -1
# evidence against (a confuser), 0 either (speech and room acoustics: a cough on a
# phone line sounds like speech to YAMNet, and every cough is in some room).
GROUPS: dict[str, tuple[tuple[int, ...], int]] = {
    "cough": ((yamnet.COUGH,), +1),
    "throat clearing": ((yamnet.THROAT_CLEARING,), -1),
    "sneeze": ((yamnet.SNEEZE,), -1),
    "speech": (_span(0, 5), 0),
    "shouting and screaming": (_span(6, 12), -1),
    "laughter": (_span(13, 18), -1),
    "crying": (_span(19, 22), -1),
    "other voice": (_span(23, 35), -1),  # sighs, singing, humming, groans, whistling
    "breathing": ((36, 37, 40, 41, 45), -1),  # breathing, wheeze, pant, snort, sniff
    "snoring": ((38,), -1),
    "gasp": ((39,), -1),
    # footsteps, chewing, hiccup, burping, fart..., heartbeat
    "body sounds": ((*_span(46, 55), 59, 60), -1),
    "hands": ((56, 57, 58, 61, 62), -1),  # hands, finger snapping, clapping, applause
    "crowd": (_span(63, 66), -1),
    "animals": (_span(67, 131), -1),
    "music": (_span(132, 276), -1),
    "nature": (_span(277, 293), -1),
    "vehicles": (_span(294, 347), -1),
    "doors and knocks": (_span(348, 357), -1),
    "household": (_span(358, 381), -1),
    "alarms": (_span(382, 397), -1),
    "mechanisms": (_span(398, 419), -1),
    "impacts": (_span(420, 474), -1),  # explosions, wood, glass, thumps, bangs...
    "other sounds": (_span(475, 499), -1),
    "acoustic environment": (_span(500, 520), 0),
}
GROUP_NAMES = tuple(GROUPS)
SIGNS = np.array([sign for _, sign in GROUPS.values()], dtype=np.int8)
CONFUSERS = tuple(name for name, (_, sign) in GROUPS.items() if sign < 0)
# Confusers that are not made by a human voice: YAMNet tells them from a cough even
# through a phone line. The voice's own sounds (laughter, breathing, throat clearing,
# sneezes...) sound like a phone-line cough to YAMNet too (the training coughs' own
# windows say so), so a veto on them costs coughs.
NOT_VOICE = (
    "hands",
    "animals",
    "music",
    "nature",
    "vehicles",
    "doors and knocks",
    "household",
    "alarms",
    "mechanisms",
    "impacts",
    "other sounds",
)
# The voice's own confusers (and the body's): trusted only on wideband windows.
VOICE = tuple(name for name in CONFUSERS if name not in NOT_VOICE)
_COLUMNS = [np.array(classes) + EMBEDDING for classes, _ in GROUPS.values()]
VETOED = 1e-4  # a vetoed window's score is multiplied by this (its rank is kept)


def group_logits(windows: np.ndarray) -> np.ndarray:
    """Each window's strongest class logit in each of :data:`GROUPS`, ``(n, groups)``."""
    return np.stack([windows[:, cols].max(axis=1) for cols in _COLUMNS], axis=1)


def dominance(windows: np.ndarray) -> np.ndarray:
    """How far each group's logit exceeds YAMNet's ``Cough`` logit, ``(n, groups)``."""
    groups = group_logits(windows)
    return groups - groups[:, [GROUP_NAMES.index("cough")]]


@dataclass(frozen=True)
class WindowDetector:
    """Per-window cough scores in [0, 1] from window rows (``window_features``).

    ``head`` is a logistic head on the rows (with the recording's context appended
    when ``context``), or on :func:`group_logits` and ``components`` (principal
    directions of the embedding) when ``inputs == "groups"``. Then, optionally, the
    logit is capped at YAMNet's ``Cough`` logit plus ``cap``, and a window whose
    :func:`dominance` reaches its group's ``veto`` margin is scored ``VETOED`` times
    what it would have been (``inf`` margins never veto).
    """

    design: str
    head: Head
    inputs: str = "features"  # "features" or "groups"
    context: bool = False
    components: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING), np.float32))
    component_mean: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING, np.float32))
    veto: np.ndarray | None = None  # (groups,) margins
    cap: float | None = None
    # (groups,) margins that veto only a wideband window (BAND_COLUMN >= wideband_db):
    # YAMNet's voice classes are trusted where the window's event reaches above 4 kHz.
    wideband_veto: np.ndarray | None = None
    wideband_db: float = 0.0

    def head_inputs(self, windows: np.ndarray) -> np.ndarray:
        if self.inputs == "groups":
            projected = (windows[:, :EMBEDDING] - self.component_mean) @ self.components.T
            return np.hstack([group_logits(windows), projected])
        windows = windows[:, :YAMNET_COLUMNS]
        return with_context(windows) if self.context else windows

    def logits(self, windows: np.ndarray) -> np.ndarray:
        x = np.asarray(self.head_inputs(np.asarray(windows, np.float32)), np.float64)
        z = ((x - self.head.mean) / self.head.scale) @ self.head.weights + self.head.bias
        if self.cap is not None:
            z = np.minimum(z, windows[:, COUGH_COLUMN] + self.cap)
        return np.asarray(z)

    def vetoed(self, windows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(windows), dtype=bool)
        if self.veto is None and self.wideband_veto is None:
            return out
        dom = dominance(windows)
        if self.veto is not None:
            out |= (dom >= self.veto).any(axis=1)
        if self.wideband_veto is not None:
            if windows.shape[1] <= BAND_COLUMN:
                raise BundleError(f"{self.design} needs each window's band column")
            wideband = windows[:, BAND_COLUMN] >= self.wideband_db
            out |= wideband & (dom >= self.wideband_veto).any(axis=1)
        return out

    def scores(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, np.float32)
        p = 1.0 / (1.0 + np.exp(-np.clip(self.logits(windows), -60.0, 60.0)))
        return np.where(self.vetoed(windows), p * VETOED, p)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            design=np.array(self.design),
            inputs=np.array(self.inputs),
            context=np.array(self.context),
            mean=self.head.mean,
            scale=self.head.scale,
            weights=self.head.weights,
            bias=np.float64(self.head.bias),
            components=self.components.astype(np.float32),
            component_mean=self.component_mean.astype(np.float32),
            veto=np.full(0, np.nan) if self.veto is None else self.veto.astype(np.float64),
            cap=np.float64(np.nan if self.cap is None else self.cap),
            wideband_veto=np.full(0, np.nan)
            if self.wideband_veto is None
            else self.wideband_veto.astype(np.float64),
            wideband_db=np.float64(self.wideband_db),
            groups=np.array(GROUP_NAMES),
        )

    @classmethod
    def load(cls, path: Path) -> WindowDetector:
        try:
            with np.load(path) as z:
                if tuple(str(g) for g in z["groups"]) != GROUP_NAMES:
                    raise BundleError(f"{path} was written with other class groups")
                veto = z["veto"].astype(np.float64)
                cap = float(z["cap"])
                # Detectors written before the wideband veto have neither field.
                wide = z["wideband_veto"].astype(np.float64) if "wideband_veto" in z else None
                wide_db = float(z["wideband_db"]) if "wideband_db" in z else 0.0
                return cls(
                    design=str(z["design"]),
                    head=Head(
                        mean=z["mean"].astype(np.float64),
                        scale=z["scale"].astype(np.float64),
                        weights=z["weights"].astype(np.float64),
                        bias=float(z["bias"]),
                    ),
                    inputs=str(z["inputs"]),
                    context=bool(z["context"]),
                    components=z["components"].astype(np.float32),
                    component_mean=z["component_mean"].astype(np.float32),
                    veto=veto if veto.size else None,
                    cap=None if np.isnan(cap) else cap,
                    wideband_veto=wide if wide is not None and wide.size else None,
                    wideband_db=wide_db,
                )
        except FileNotFoundError as exc:
            raise BundleError(f"detector weights missing: {path}") from exc
        except KeyError as exc:
            raise BundleError(f"{path} is not a detector's weights (no {exc})") from exc


def fit_constrained_logistic(
    x: np.ndarray, y: np.ndarray, signs: np.ndarray, l2: float, max_iter: int = 2000
) -> Head:
    """Balanced logistic regression on standardised columns, column ``j``'s weight
    kept ``>= 0`` where ``signs[j] > 0`` and ``<= 0`` where ``signs[j] < 0``
    (L-BFGS-B with bounds; scikit-learn's solvers take no sign constraints)."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    weight = np.where(y > 0, 0.5 / max(y.mean(), 1e-12), 0.5 / max(1 - y.mean(), 1e-12))
    weight /= len(y)
    sign = np.where(y > 0, 1.0, -1.0)

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        margin = -sign * (z @ p[:-1] + p[-1])
        slope = -weight * sign * 0.5 * (1 + np.tanh(0.5 * margin))
        value = float(np.sum(weight * np.logaddexp(0, margin)) + 0.5 * l2 * p[:-1] @ p[:-1])
        return value, np.concatenate([z.T @ slope + l2 * p[:-1], [slope.sum()]])

    bounds = [(0.0, None) if s > 0 else (None, 0.0) if s < 0 else (None, None) for s in signs]
    result = minimize(
        loss,
        np.zeros(x.shape[1] + 1),
        jac=True,
        method="L-BFGS-B",
        bounds=[*bounds, (None, None)],
        options={"maxiter": max_iter},
    )
    return Head(mean=mean, scale=scale, weights=result.x[:-1], bias=float(result.x[-1]))


def principal_components(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the first ``k`` principal directions ``(k, 1024)`` of embeddings."""
    mean = embeddings.mean(axis=0)
    if k == 0:
        return mean, np.zeros((0, embeddings.shape[1]))
    _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
    return mean, vt[:k]


def veto_margins(coughs: np.ndarray, groups: tuple[str, ...], quantile: float) -> np.ndarray:
    """Per group, the ``quantile`` of its :func:`dominance` over the windows of the
    training coughs (``inf`` for groups not in ``groups``): a window must outscore
    (nearly) every training cough window's confuser evidence to be vetoed."""
    margins = np.full(len(GROUP_NAMES), np.inf)
    dom = dominance(coughs)
    for name in groups:
        j = GROUP_NAMES.index(name)
        margins[j] = float(np.quantile(dom[:, j], quantile)) + 1e-6
    return margins
