"""Each layer's share of the cost model over the memory grid, all layers at once.

A layer's remote side enters the model only through a few numbers of its replica partition (`PartStats`),
so the planner and the exact solver evaluate thousands of candidate layers as numpy rows. The sums over
layers equal `estimate()`'s totals (tested). L = MoE layers (or candidate rows), E = experts, G = grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remoe.scheduler.estimate import Tokens
from remoe.scheduler.problem import Prices, Profile, Request


@dataclass(frozen=True, slots=True)
class PartStats:
    """One layer's remote function under an expert -> replica partition."""

    worst_max: float  # worst-case prefill tokens on the busiest replica
    expected_max: float  # expected prefill tokens on the busiest replica
    expected_sum: float  # expected prefill tokens over all replicas
    hits: float  # expected remote experts one decode token uses
    invocations: float  # expected replicas one decode token invokes: sum_j min(1, hits_j)
    replicas: int  # non-empty replicas

    @classmethod
    def of(cls, layer: int, parts: list[list[int]], tokens: Tokens) -> PartStats:
        parts = [p for p in parts if p]
        if not parts:
            return NO_REMOTE
        worst, expected, route = tokens.worst[layer], tokens.expected[layer], tokens.route[layer]
        x = [float(expected[p].sum()) for p in parts]
        hit = [float(route[p].sum()) for p in parts]
        return cls(
            max(float(worst[p].sum()) for p in parts),
            max(x),
            sum(x),
            sum(hit),
            sum(min(1.0, h) for h in hit),
            len(parts),
        )


NO_REMOTE = PartStats(0.0, 0.0, 0.0, 0.0, 0.0, 0)


def stats_array(stats: list[PartStats]) -> np.ndarray:
    """[R, 6] in PartStats' field order."""
    return np.array([[getattr(s, f) for f in PartStats.__slots__] for s in stats], dtype=np.float64).reshape(-1, 6)


def single_replica_stats(layers: np.ndarray, local: np.ndarray, tokens: Tokens) -> np.ndarray:
    """[R, 6] stats when each row's remote experts share one replica (vectorised PartStats.of)."""
    remote = ~local
    worst = (tokens.worst[layers] * remote).sum(1)
    expected = (tokens.expected[layers] * remote).sum(1)
    hits = (tokens.route[layers] * remote).sum(1)
    any_remote = remote.any(1).astype(np.float64)
    return np.stack([worst, expected, expected, hits, np.minimum(1.0, hits), any_remote], axis=1)


@dataclass(frozen=True, slots=True)
class Terms:
    """Per row over the grid, shapes [L, G]. A row's objective is remote_cost + main rate * main_s."""

    remote_cost: np.ndarray  # $ of the layer's function replicas (expected busy time x memory)
    main_s: np.ndarray  # seconds the layer keeps the main model busy: expected prefill + n_out decode steps
    prefill: np.ndarray  # worst-case prefill seconds (the TTFT constraint)
    decode: np.ndarray  # worst-case seconds per decode token (the TPOT constraint)

    def cost(self, main_rate: float) -> np.ndarray:
        return self.remote_cost + main_rate * self.main_s


def terms(
    request: Request,
    layers: np.ndarray,
    local: np.ndarray,
    stats: np.ndarray,
    tokens: Tokens,
    profile: Profile,
    prices: Prices,
    grid: np.ndarray,
) -> Terms:
    """Rows for (layer index [R], local-expert mask [R, E], remote partition stats [R, 6]) over grid [G]."""
    k, t_loc, t_inv = request.top_k, profile.local_expert_s_per_token, profile.invoke_s
    d_over_b = 2 * request.hidden_bytes_per_token / profile.bandwidth_bytes_s
    th1, th2, th3 = profile.remote_fit
    t_remote = (th1 * np.exp(-th2 * grid) + th3)[None, :]  # [1, G]
    per_token = t_remote + d_over_b
    w_max, x_max, x_sum, hits, invocations, replicas = stats.T[..., None]  # each [R, 1]
    remote = replicas > 0
    local_w = (tokens.worst[layers] * local).sum(1, keepdims=True) * t_loc  # [R, 1]
    local_x = (tokens.expected[layers] * local).sum(1, keepdims=True) * t_loc
    n_local = local.sum(1, keepdims=True)
    n_remote = request.experts - n_local
    prefill_base = profile.backbone_prefill_layer_s + request.n_in * (
        profile.backbone_prefill_s_per_token + 2 * profile.swap_s_per_token
    )
    decode_base = profile.backbone_decode_s + 2 * profile.swap_s_per_token
    prefill = prefill_base + np.maximum(local_w, np.where(remote, w_max * per_token + t_inv, 0.0))
    expected_prefill = prefill_base + np.maximum(local_x, np.where(remote, x_max * per_token + t_inv, 0.0))
    remote_decode = np.minimum(k, n_remote) * t_remote + d_over_b + t_inv
    decode = decode_base + np.maximum(np.minimum(k, n_local) * t_loc, np.where(remote, remote_decode, 0.0))
    busy = x_sum * per_token + replicas * t_inv + request.n_out * (hits * per_token + invocations * t_inv)
    remote_cost = np.where(remote, prices.cpu_gb_s * grid[None, :] * busy, 0.0)
    return Terms(remote_cost, expected_prefill + request.n_out * decode, prefill, decode)
