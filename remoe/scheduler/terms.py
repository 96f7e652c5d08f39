"""Each layer's share of the cost model over the memory grid, all layers at once.

A layer's remote side enters the model only through a few numbers of its replica partition (`PartStats`),
so the planner and the exact solver evaluate thousands of candidate layers as numpy rows. The sums over
layers equal `estimate()`'s totals (tested). L = MoE layers (or candidate rows), E = experts, G = grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remoe.scheduler import host_cores
from remoe.scheduler.estimate import Tokens, backbone_decode_s, decode_steps
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
    experts_max: int  # experts a prompt may route to on the busiest replica (each costs a call per batch)
    experts_sum: int  # experts a prompt may route to, over all replicas
    worst_sum: float  # worst-case prefill tokens summed over the replicas (their work on shared cores)

    @classmethod
    def of(cls, layer: int, parts: list[list[int]], tokens: Tokens) -> PartStats:
        parts = [p for p in parts if p]
        if not parts:
            return NO_REMOTE
        worst, expected, route = tokens.worst[layer], tokens.expected[layer], tokens.route[layer]
        x = [float(expected[p].sum()) for p in parts]
        hit = [float(route[p].sum()) for p in parts]
        active = [int((route[p] > 0).sum()) for p in parts]
        busiest = max(range(len(parts)), key=lambda j: float(worst[parts[j]].sum()))
        return cls(
            float(worst[parts[busiest]].sum()),
            max(x),
            sum(x),
            sum(hit),
            sum(min(1.0, h) for h in hit),
            len(parts),
            active[busiest],
            sum(active),
            float(sum(worst[p].sum() for p in parts)),
        )


NO_REMOTE = PartStats(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0.0)
FIELDS = len(PartStats.__slots__)


def stats_array(stats: list[PartStats]) -> np.ndarray:
    """[R, FIELDS] in PartStats' field order."""
    rows = [[getattr(s, f) for f in PartStats.__slots__] for s in stats]
    return np.array(rows, dtype=np.float64).reshape(-1, FIELDS)


def single_replica_stats(layers: np.ndarray, local: np.ndarray, tokens: Tokens) -> np.ndarray:
    """[R, FIELDS] stats when each row's remote experts share one replica (vectorised PartStats.of)."""
    remote = ~local
    worst = (tokens.worst[layers] * remote).sum(1)
    expected = (tokens.expected[layers] * remote).sum(1)
    hits = (tokens.route[layers] * remote).sum(1)
    any_remote = remote.any(1).astype(np.float64)
    active = (remote & (tokens.route[layers] > 0)).sum(1).astype(np.float64)
    return np.stack([worst, expected, expected, hits, np.minimum(1.0, hits), any_remote, active, active, worst], axis=1)


@dataclass(frozen=True, slots=True)
class Terms:
    """Per row over the grid, shapes [L, G]. A row's objective is remote_cost + main rate * main_s."""

    remote_cost: np.ndarray  # $ of the layer's function replicas (expected busy time x memory)
    main_s: np.ndarray  # seconds the layer keeps the main model busy: expected prefill + n_out - 1 decode steps
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
    """Rows for (layer index [R], local-expert mask [R, E], remote partition stats [R, FIELDS]) over grid [G]."""
    k, t_loc, t_inv = request.top_k, profile.local_expert_s_per_token, profile.invoke_s
    d_over_b = 2 * request.hidden_bytes_per_token / profile.bandwidth_bytes_s
    th1, th2, th3 = profile.remote_fit
    cores = profile.function_host_cores
    t_remote = (th1 * np.exp(-th2 * host_cores.speed_memory_gb(grid, cores)) + th3)[None, :]  # [1, G]
    per_token = t_remote + d_over_b
    threads = host_cores.threads(grid, cores)[None, :]  # [1, G] (1 where functions have CPUs of their own)
    w_max, x_max, x_sum, hits, invocations, replicas, experts_max, experts_sum, w_sum = stats.T[..., None]  # [R, 1]
    call = profile.expert_call_s
    remote = replicas > 0
    t_loc_prefill = profile.local_expert_prefill_s_per_token
    local_w = (tokens.worst[layers] * local).sum(1, keepdims=True) * t_loc_prefill  # [R, 1]
    local_x = (tokens.expected[layers] * local).sum(1, keepdims=True) * t_loc_prefill
    n_local = local.sum(1, keepdims=True)
    n_remote = request.experts - n_local
    prefill_base = profile.backbone_prefill_layer_s + request.n_in * (
        profile.backbone_prefill_s_per_token + 2 * profile.swap_s_per_token
    )
    decode_base = backbone_decode_s(request, profile) + 2 * profile.swap_s_per_token
    dispatch = profile.dispatch_s * replicas  # [R, 1] serial, in the backbone, per replica called
    # The expert phase: the longest batch, on the host's cores at least all batches' core-seconds over them.
    remote_w = w_max * per_token + t_inv + call * experts_max
    all_w = np.where(remote, w_sum * per_token + replicas * t_inv + call * experts_sum, 0.0)
    phase_w = host_cores.expert_phase_s(
        np.maximum(local_w, np.where(remote, remote_w, 0.0)), local_w + threads * all_w, cores
    )
    prefill = prefill_base + dispatch + phase_w
    remote_x = x_max * per_token + t_inv + call * experts_max
    all_x = x_sum * per_token + replicas * t_inv + call * experts_sum
    phase_x = host_cores.expert_phase_s(
        np.maximum(local_x, np.where(remote, remote_x, 0.0)), local_x + threads * np.where(remote, all_x, 0.0), cores
    )
    expected_prefill = prefill_base + dispatch + phase_x
    remote_decode = np.minimum(k, n_remote) * (t_remote + call) + d_over_b + t_inv
    decode_dispatch = profile.dispatch_s * np.minimum(k, replicas)  # worst case: the token's experts spread out
    decode = (
        decode_base + decode_dispatch + np.maximum(np.minimum(k, n_local) * t_loc, np.where(remote, remote_decode, 0.0))
    )
    busy = host_cores.replicas_billed_s(all_x, replicas, threads, local_x > 0, phase_x, cores)
    decode_busy = hits * (per_token + call) + invocations * t_inv
    decode_threads = invocations * threads + (n_local > 0)
    busy = busy + decode_steps(request) * host_cores.stretched_s(decode_busy, decode_threads, np.inf, cores)
    remote_cost = np.where(remote, prices.cpu_gb_s * grid[None, :] * busy, 0.0)
    return Terms(remote_cost, expected_prefill + decode_steps(request) * decode, prefill, decode)
