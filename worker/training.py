"""Fitting the logistic head on backbone features and writing a bundle.

Kept beside the model code because it shares the backbones; the training
command builds on these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from shared.bundle import Head, Manifest, write_bundle
from shared.spectrogram import SpectrogramParams
from worker.model import InceptionV3Backbone


def fit_head(features: np.ndarray, labels: np.ndarray, l2: float = 1.0) -> Head:
    """L2-regularised logistic regression with balanced class weights (L-BFGS)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if set(np.unique(y)) != {0.0, 1.0}:
        raise ValueError("training needs examples of both labels")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    sample_weight = np.where(y == 1.0, len(y) / (2 * n_pos), len(y) / (2 * n_neg))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        logits = z @ w + b
        p = 1.0 / (1.0 + np.exp(-logits))
        eps = 1e-12
        nll = -np.sum(sample_weight * (y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
        value = nll / len(y) + 0.5 * l2 * float(w @ w) / len(y)
        residual = sample_weight * (p - y)
        grad_w = (z.T @ residual + l2 * w) / len(y)
        grad_b = residual.sum() / len(y)
        return value, np.concatenate([grad_w, [grad_b]])

    theta0 = np.zeros(z.shape[1] + 1)
    result = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return Head(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=result.x[:-1].astype(np.float32),
        bias=float(result.x[-1]),
    )


def build_inception_bundle(
    out: Path,
    waveforms: Sequence[np.ndarray],
    labels: Sequence[int],
    *,
    name: str,
    version: str,
    params: SpectrogramParams | None = None,
    weights: str = "imagenet",
    threshold: float = 0.5,
    card: dict | None = None,
) -> Manifest:
    """Extract features with Inception V3 and fit a head: the smallest real training path."""
    params = params or SpectrogramParams()
    backbone = InceptionV3Backbone.build_for_training(params, weights=weights)
    features = np.concatenate(
        [backbone.embed(waveforms[i : i + 16]) for i in range(0, len(waveforms), 16)]
    )
    head = fit_head(features, np.asarray(labels))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if backbone.weights_source is None:
        # Random weights cannot be re-created elsewhere: ship them in the bundle.
        backbone_spec = {
            "name": backbone.name,
            "weights": "bundle",
            "file": backbone.save_weights(out),
        }
    else:
        backbone_spec = {"name": backbone.name, "weights": "imagenet"}
    manifest = Manifest(
        name=name,
        version=version,
        backbone=backbone_spec,
        spectrogram=params,
        threshold=threshold,
        card=card or {},
    )
    write_bundle(out, manifest, head)
    return manifest
