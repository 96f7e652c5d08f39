"""Jensen-Shannon divergence between forecast and actual activation (the paper's accuracy measure)."""

from __future__ import annotations

import numpy as np


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise JS divergence (natural log, in [0, ln 2]) of [L, E] distributions -> [L]."""
    p = p / np.clip(p.sum(axis=-1, keepdims=True), 1e-12, None)
    q = q / np.clip(q.sum(axis=-1, keepdims=True), 1e-12, None)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0.0).sum(axis=-1)

    return (kl(p, m) + kl(q, m)) / 2


def mean_js(forecast: np.ndarray, actual: np.ndarray) -> float:
    return float(js_divergence(forecast, actual).mean())
