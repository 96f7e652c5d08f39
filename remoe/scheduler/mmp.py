"""Main Model Pre-allocation's worst case: how many of a prompt's tokens one expert may receive.

The paper bounds the tokens one expert gets among n as sqrt(3n)/2 + n/K and states it at 95%. A one-sided
Hoeffding tail only guarantees exp(-2 t^2 / n) = exp(-1.5) = 0.22 for the deviation t = sqrt(3n)/2, i.e.
about 78% confidence; the binomial itself puts more mass below the bound (99.4% at n = 200, K = 8), so the
bound over-provisions by an amount that depends on n and K. Remoe uses the exact quantile at the
confidence asked for: a token picks expert e with probability p_e = top_k * s_e (s_e the forecast share
of the layer's routed slots), so its count is Binomial(n, p_e).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom


def paper_worst_case(n: int, num_experts: int) -> float:
    """sqrt(3n)/2 + n/K: the paper's bound for uniform routing."""
    return math.sqrt(3 * n) / 2 + n / num_experts


def paper_bound_confidence() -> float:
    """The one-sided Hoeffding confidence of the paper's bound: 1 - exp(-1.5), for every n."""
    return 1 - math.exp(-1.5)


def route_probability(frequency: np.ndarray, top_k: int) -> np.ndarray:
    """[..., E] share of routed slots -> probability that one token uses each expert."""
    return np.clip(np.asarray(frequency, dtype=np.float64) * top_k, 0.0, 1.0)


def worst_case_tokens(n: int, probability: np.ndarray, confidence: float) -> np.ndarray:
    """Per expert, the smallest m with P(Binomial(n, p) <= m) >= confidence; 0 where p == 0."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    p = np.asarray(probability, dtype=np.float64)
    return np.where(p > 0, binom.ppf(confidence, n, p), 0.0)


def expected_tokens(n: int, probability: np.ndarray) -> np.ndarray:
    return n * np.asarray(probability, dtype=np.float64)
