"""The evaluation's workloads: the paper's (corpus prompts, fixed output, batch 1), a prefill/decode ratio
sweep, and a bursty arrival trace whose idle gaps outlast the function TTL."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROMPT_CHARS = 500  # the paper feeds the first 500 characters of each prompt


@dataclass(frozen=True)
class Request:
    prompt: str
    new_tokens: int
    arrival_s: float | None = None  # seconds after the workload starts; None = right after the previous one


@dataclass(frozen=True)
class Workload:
    name: str
    requests: list[Request]
    concurrent: bool = False  # True: each request is sent at its arrival time, overlapping others

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.requests]


def paper(texts: list[str], count: int, new_tokens: int) -> Workload:
    """`count` corpus prompts, first 500 characters, `new_tokens` out each, one after another."""
    return Workload("paper", [Request(t[:PROMPT_CHARS], new_tokens) for t in texts[:count]])


def ratio_sweep(texts: list[str], chars: list[int], outputs: list[int], per_cell: int) -> list[Workload]:
    """One workload per (prompt length, output length): prompts cut (or repeated) to `c` characters."""
    out = []
    for c in chars:
        prompts = [(t * (c // max(1, len(t)) + 1))[:c] for t in texts[:per_cell]]
        for n in outputs:
            out.append(Workload(f"sweep-{c}c-{n}t", [Request(p, n) for p in prompts]))
    return out


def bursty(texts: list[str], bursts: int, new_tokens: int, idle_s: float, seed: int = 0) -> Workload:
    """Poisson bursts (1 + Poisson(3) requests, 0.3 s mean apart) separated by idle gaps of `idle_s`: set it
    longer than the function TTL so functions scale to zero between bursts and every burst starts cold."""
    rng = np.random.default_rng(seed)
    requests, t, i = [], 0.0, 0
    for _ in range(bursts):
        for _ in range(1 + rng.poisson(3)):
            requests.append(Request(texts[i % len(texts)][:PROMPT_CHARS], new_tokens, round(t, 3)))
            t += rng.exponential(0.3)
            i += 1
        t += idle_s
    return Workload("bursty", requests, concurrent=True)


def burst_starts(workload: Workload, gap_s: float) -> list[int]:
    """Indices of the requests that open a burst (the first, and each after an idle gap of at least gap_s)."""
    arrivals = [r.arrival_s or 0.0 for r in workload.requests]
    return [0] + [i for i in range(1, len(arrivals)) if arrivals[i] - arrivals[i - 1] >= gap_s]
