"""One request planned on its own (what `remoe plan` prints and writes as a plan file): the scheduler's planner
over the request a shape, a forecast and SLOs make, or a fixed number of remote experts per layer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from remoe.errors import RemoeError
from remoe.scheduler.plan_output import plan_to_json
from remoe.scheduler.planner import Plan, plan
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.shape import ModelShape


@dataclass
class PlanQuery:
    shape: ModelShape
    moe_layers: list[int]
    n_in: int
    n_out: int
    frequency: np.ndarray | None  # [L, E], None: every expert equally likely
    forecast_source: str
    slo_ttft_s: float = math.inf
    slo_tpot_s: float = math.inf
    confidence: float = 0.95
    remote: int | None = None  # exactly this many experts of every layer out (None: the planner chooses)


def plan_one(query: PlanQuery, profile: Profile, prices: Prices) -> tuple[Plan, Request, dict]:
    """(the plan, the request it is for, the plan file's document)."""
    shape = query.shape
    if query.n_in < 1:
        raise RemoeError("a request needs at least one prompt token")
    if query.remote is not None and not 0 <= query.remote <= shape.experts:
        raise RemoeError(f"--remote must be in [0, {shape.experts}]")
    request = shape.request(
        query.frequency,
        query.n_in,
        query.n_out,
        slo_ttft_s=query.slo_ttft_s,
        slo_tpot_s=query.slo_tpot_s,
        confidence=query.confidence,
    )
    fixed = query.remote is not None
    result = plan(
        request, profile, prices, Limits(), counts=[query.remote] if fixed else None, per_layer_moves=not fixed
    )
    document = plan_to_json(result, request, query.moe_layers)
    document["plan"]["forecast"] = query.forecast_source
    document["plan"]["model"] = shape.name
    return result, request, document
