"""Plans that know what is running: a plan's layer may be served by the functions that already run instead of
the ones the plan would start, when that is cheaper once a new function's start is priced.

A new function costs (modelled) its memory x (its cold start + its share of the keep-alive it is held for after
its last call) at the CPU price: the keep-alive is shared by the requests that arrive within one keep-alive (the
gateway counts them; a function no later request reuses holds its memory that long for this request alone),
while a running one is held anyway. Per layer the choices are: the plan's own remote set (each replica the
running functions do not already cover is a new function, as the backbone routes it: plan_reuse.py), the
experts the running functions of that layer host (no start), or every expert local (no start). A coordinate
descent over the layers keeps the SLO and lowers the plan's cost plus its starts; the plan's main memory and
estimate are recomputed for the result. L = MoE layers, E = experts per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remoe.scheduler.estimate import Estimate, LayerPlan, Tokens, estimate, main_memory_gb
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.terms import PartStats, stats_array, terms

PASSES = 3  # coordinate-descent passes over the layers (each pass that changes nothing ends it)


@dataclass(frozen=True, slots=True)
class RunningFunction:
    """A function that serves or is starting now: the planned layer (0..L-1) its experts are in, and its memory."""

    layer: int
    experts: tuple[int, ...]
    memory_gb: float


@dataclass(frozen=True, slots=True)
class WarmChoice:
    """What `prefer_running` made of a plan."""

    layers: list[LayerPlan]
    main_gpu_gb: float
    main_cpu_gb: float
    estimate: Estimate
    feasible: bool
    new_functions: int  # functions the plan starts (the backbone's routing: experts a running one hosts go there)
    reused_layers: list[int] = field(default_factory=list)  # layers moved onto the running functions
    start_cost: float = 0.0  # modelled $ of the new functions' starts and keep-alive


def start_cost(memory_gb: float, profile: Profile, prices: Prices, keep_alive_s: float, sharing: float = 1.0) -> float:
    """Modelled $ of starting one function of this memory: held through its cold start and its keep-alive, the
    keep-alive shared by `sharing` requests (those that arrive within one keep-alive)."""
    return prices.cpu_gb_s * memory_gb * (profile.cold_start_s + keep_alive_s / max(1.0, sharing))


def new_functions(layer: int, plan: LayerPlan, running: list[RunningFunction]) -> int:
    """Replicas of a planned layer that would start a function: not one a running function is (same experts, same
    memory), and hosting an expert no running function of the layer hosts."""
    here = [f for f in running if f.layer == layer]
    same = {(f.experts, round(f.memory_gb * 1024)) for f in here}
    hosted = {e for f in here for e in f.experts}
    memory_mb = round(plan.memory_gb * 1024)
    return sum(1 for part in plan.replicas if part and (tuple(part), memory_mb) not in same and not set(part) <= hosted)


def running_layer(layer: int, running: list[RunningFunction]) -> LayerPlan | None:
    """The layer served by its running functions (those of its most common memory), or None when none runs."""
    here = [f for f in running if f.layer == layer and f.experts]
    if not here:
        return None
    memories = [f.memory_gb for f in here]
    memory = max(set(memories), key=lambda m: (memories.count(m), m))
    parts = tuple(tuple(sorted(f.experts)) for f in here if f.memory_gb == memory)
    remote = tuple(sorted({e for part in parts for e in part}))
    if len(remote) != sum(map(len, parts)):  # two running functions host one expert: not a partition
        return None
    return LayerPlan(remote, memory, parts)


@dataclass(frozen=True, slots=True)
class _Option:
    kind: str  # "plan", "running" or "local"
    plan: LayerPlan
    remote_cost: float
    main_s: float
    prefill: float
    decode: float
    starts: float  # modelled $ of the functions it starts


def _option(kind, request, layer, plan, tokens, profile, prices, starts: float = 0.0) -> _Option:
    local = np.ones((1, request.experts), dtype=bool)
    local[0, list(plan.remote)] = False
    stats = stats_array([PartStats.of(layer, [list(p) for p in plan.replicas], tokens)])
    grid = np.array([plan.memory_gb if plan.remote else 0.0])
    t = terms(request, np.array([layer]), local, stats, tokens, profile, prices, grid)
    return _Option(kind, plan, float(t.remote_cost[0, 0]), float(t.main_s[0, 0]), float(t.prefill[0, 0]),
                   float(t.decode[0, 0]), starts)  # fmt: skip


def prefer_running(
    request: Request,
    planned: list[LayerPlan],
    running: list[RunningFunction],
    profile: Profile,
    prices: Prices,
    limits: Limits,
    keep_alive_s: float = 0.0,
    sharing: float = 1.0,
) -> WarmChoice:
    """The plan with each layer on its own new functions, on the running ones, or local: whichever keeps the SLO
    (or violates it least) and costs least with the starts priced."""
    tokens = Tokens.of(request)
    options: list[list[_Option]] = []
    for i, plan in enumerate(planned):
        starts = new_functions(i, plan, running) * start_cost(plan.memory_gb, profile, prices, keep_alive_s, sharing)
        layer_options = [_option("plan", request, i, plan, tokens, profile, prices, starts)]
        warm = running_layer(i, running)
        if warm is not None and warm != plan:
            layer_options.append(_option("running", request, i, warm, tokens, profile, prices))
        if plan.remote:
            layer_options.append(_option("local", request, i, LayerPlan(), tokens, profile, prices))
        options.append(layer_options)

    def score(choice: list[int]) -> tuple[bool, float]:
        picked = [options[i][c] for i, c in enumerate(choice)]
        gpu_gb, cpu_gb = main_memory_gb(request, [o.plan.remote for o in picked], limits)
        rate = prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb
        ttft, tpot = sum(o.prefill for o in picked), sum(o.decode for o in picked)
        if ttft <= request.slo_ttft_s and tpot <= request.slo_tpot_s:
            return True, sum(o.remote_cost + o.starts for o in picked) + rate * sum(o.main_s for o in picked)
        return False, ttft / request.slo_ttft_s + tpot / request.slo_tpot_s

    def better(a: tuple[bool, float], b: tuple[bool, float]) -> bool:
        return (a[0] and not b[0]) or (a[0] == b[0] and a[1] < b[1] * (1 - 1e-9))

    choice = [0] * len(planned)
    best = score(choice)
    for _ in range(PASSES):
        changed = False
        for i, layer_options in enumerate(options):
            for c in range(len(layer_options)):
                if c == choice[i]:
                    continue
                trial = choice[:i] + [c] + choice[i + 1 :]
                s = score(trial)
                if better(s, best):
                    choice, best, changed = trial, s, True
        if not changed:
            break
    layers = [options[i][c].plan for i, c in enumerate(choice)]
    gpu_gb, cpu_gb = main_memory_gb(request, [p.remote for p in layers], limits)
    return WarmChoice(
        layers,
        gpu_gb,
        cpu_gb,
        estimate(request, layers, profile, prices, limits, tokens),
        best[0],
        sum(new_functions(i, p, running) for i, p in enumerate(layers)),
        [i for i, c in enumerate(choice) if options[i][c].kind == "running"],
        sum(options[i][c].starts for i, c in enumerate(choice)),
    )
