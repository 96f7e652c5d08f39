"""Replicas of a layer's remote function: LPT partitioning of its experts and the replica count bounds.

LPT (longest processing time first): experts sorted by load, largest first (ties by expert index), each
given to the least-loaded replica (ties by replica index). Its makespan is at most (4/3 - 1/(3z)) of the
optimum.
"""

from __future__ import annotations

import heapq
import math


def lpt_partition(loads: dict[int, float], replicas: int) -> list[list[int]]:
    """{expert: load} -> `replicas` lists of experts (some may be empty when there are fewer experts)."""
    if replicas < 1:
        raise ValueError(f"need at least one replica, got {replicas}")
    if any(v < 0 or math.isnan(v) for v in loads.values()):
        raise ValueError("loads must be non-negative numbers")
    heap = [(0.0, j) for j in range(replicas)]  # (load, replica index): the least loaded pops first
    parts: list[list[int]] = [[] for _ in range(replicas)]
    for expert in sorted(loads, key=lambda e: (-loads[e], e)):
        load, j = heapq.heappop(heap)
        parts[j].append(expert)
        heapq.heappush(heap, (load + loads[expert], j))
    return parts


def makespan(parts: list[list[int]], loads: dict[int, float]) -> float:
    return max((sum(loads[e] for e in part) for part in parts), default=0.0)


def min_replicas_for_payload(tokens: float, hidden_bytes_per_token: int, payload_bytes: int) -> int:
    """Replicas needed so that each invocation's hidden states fit the payload limit (tokens split evenly)."""
    if payload_bytes <= 0:
        raise ValueError("payload limit must be > 0")
    return max(1, math.ceil(tokens * hidden_bytes_per_token / payload_bytes))
