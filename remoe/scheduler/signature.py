"""Forecast signatures: requests whose forecasts, lengths, SLOs and prices round to the same values share one
plan (cached in Redis). The plan is computed for the rounded request itself, with the prompt length rounded up
to its bucket, so a cached plan is exactly the plan of every request under its signature (and never
under-provisions a shorter prompt). L = MoE layers, E = experts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

FREQUENCY_STEP = 1 / 200  # forecast shares are rounded to half a percent
N_IN_BUCKET = 32  # prompt lengths are rounded up to a multiple of this
N_OUT_BUCKET = 32


@dataclass(frozen=True, slots=True)
class PlanKey:
    frequency: np.ndarray  # [L, E] rounded, rows renormalised to sum to 1
    n_in: int  # rounded up
    n_out: int  # rounded up
    slo_ttft_s: float
    slo_tpot_s: float
    cpu_gb_s: float
    gpu_gb_s: float
    confidence: float

    @property
    def signature(self) -> str:
        body = {
            "f": self.frequency.round(6).tolist(),
            "n": [self.n_in, self.n_out],
            "slo": [_finite(self.slo_ttft_s), _finite(self.slo_tpot_s)],
            "price": [self.cpu_gb_s, self.gpu_gb_s],
            "c": self.confidence,
        }
        return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 6)


def _round_up(n: int, bucket: int) -> int:
    return max(bucket, -(-n // bucket) * bucket)


def plan_key(
    frequency: np.ndarray,
    n_in: int,
    n_out: int,
    slo_ttft_s: float,
    slo_tpot_s: float,
    cpu_gb_s: float,
    gpu_gb_s: float,
    confidence: float,
) -> PlanKey:
    f = np.asarray(frequency, dtype=np.float64)
    rounded = np.round(f / FREQUENCY_STEP) * FREQUENCY_STEP  # [L, E]
    empty = rounded.sum(1) == 0
    rounded[empty] = 1.0  # a row rounded to nothing: every expert equally likely
    rounded /= rounded.sum(1, keepdims=True)
    return PlanKey(
        rounded,
        _round_up(n_in, N_IN_BUCKET),
        _round_up(max(n_out, 1), N_OUT_BUCKET),
        slo_ttft_s,
        slo_tpot_s,
        cpu_gb_s,
        gpu_gb_s,
        confidence,
    )
