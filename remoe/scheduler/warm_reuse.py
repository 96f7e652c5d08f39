"""Plans that know what is running: a plan's layer may be served by the functions that already run instead of
the ones the plan would start, when that is cheaper once a new function's start is priced.

A new function costs (modelled) its memory x (its cold start + its share of the keep-alive it is held for after
its last call) at the CPU price: the keep-alive is shared by the requests that arrive within one keep-alive (the
gateway counts them; a function no later request reuses holds its memory that long for this request alone),
while a running one is held anyway. Per layer the choices are: the plan's own remote set (each replica the
running functions do not already cover is a new function, as the backbone routes it: plan_reuse.py), the
experts the running functions of that layer host (no start), the plan's set in one replica (less memory held),
or every expert local (no start). The search (every combination for a few layers, coordinate descents from
several starts beyond) first fits the plan's functions into the platform's memory budget (a plan that needs more
than the platform holds at once keeps evicting its own functions: each batch then starts one), then keeps the
SLO, then lowers the plan's cost plus its starts; the plan's main memory and estimate are recomputed for the
result. L = MoE layers, E = experts per layer.

Functions other plans started share that budget: a new function that does not fit beside the running ones makes
the platform evict the least recently used (LRU), and the next request that wants those restarts them. Each plan
fitting the budget on its own, 50 DeepSeek-shaped requests started 147 functions that way (issue 25). So the
GB a plan's new functions push out (running + new - budget) are priced as starts too: the restart they cause.
(Measured once the search below was fixed, warm_plans 2026-12-07: 18 starts in those 50 requests with or without
this price; it guards the tight-budget case the tests build, it did not cause that drop.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from remoe.scheduler.estimate import GIB, Estimate, LayerPlan, Tokens, estimate, main_memory_gb, round_up
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.terms import PartStats, stats_array, terms

PASSES = 3  # coordinate-descent passes over the layers (each pass that changes nothing ends it)
# Up to this many layer-option combinations every one is scored (a 4-layer model has at most 4^4 = 256); beyond,
# a coordinate descent from each uniform start (a descent from the plan's own choice alone stops in local optima:
# it takes the first single-layer move that fits the budget, e.g. a layer local, where reusing another is cheaper).
EXHAUSTIVE_UP_TO = 256


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
    feasible: bool  # meets the SLO
    fits_budget: bool  # its functions fit the platform's memory budget at once
    new_functions: int  # functions the plan starts (the backbone's routing: experts a running one hosts go there)
    reused_layers: list[int] = field(default_factory=list)  # layers moved onto the running functions
    start_cost: float = 0.0  # modelled $ of the new functions' starts and keep-alive, and of the restarts
    evicted_gb: float = 0.0  # GB of running functions its new ones push out of the budget (modelled)


def start_cost(memory_gb: float, profile: Profile, prices: Prices, keep_alive_s: float, sharing: float = 1.0) -> float:
    """Modelled $ of starting one function of this memory: held through its cold start and its keep-alive, the
    keep-alive shared by `sharing` requests (those that arrive within one keep-alive)."""
    return prices.cpu_gb_s * memory_gb * (profile.cold_start_s + keep_alive_s / max(1.0, sharing))


def layer_functions(layer: int, plan: LayerPlan, running: list[RunningFunction]) -> tuple[int, float]:
    """(functions a planned layer starts, GB its functions hold) as the backbone routes it (plan_reuse.py): a
    replica that is a running function (same experts, same memory) is that one; otherwise each of its experts a
    running function hosts goes there, and the rest, if any, to one new function of the plan's memory."""
    here = [f for f in running if f.layer == layer]
    same = {(f.experts, round(f.memory_gb * 1024)): j for j, f in enumerate(here)}
    host: dict[int, int] = {}
    for j, f in enumerate(here):  # earlier (warm) functions win an expert two host, as in the backbone
        for e in f.experts:
            host.setdefault(e, j)
    memory_mb = round(plan.memory_gb * 1024)
    started, used = 0, set()
    for part in (p for p in plan.replicas if p):
        if (tuple(part), memory_mb) in same:
            used.add(same[(tuple(part), memory_mb)])
            continue
        used.update(host[e] for e in part if e in host)
        started += any(e not in host for e in part)
    return started, started * plan.memory_gb + sum(here[j].memory_gb for j in used)


def new_functions(layer: int, plan: LayerPlan, running: list[RunningFunction]) -> int:
    """Functions a planned layer starts, given what runs (layer_functions)."""
    return layer_functions(layer, plan, running)[0]


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


# What a function process holds besides its experts (interpreter, torch, buffers): a packed replica gets this on top.
PROCESS_GB = 0.5


def packed_layer(plan: LayerPlan, request: Request, limits: Limits) -> LayerPlan | None:
    """The layer's remote experts in one replica of the least memory that holds them (less held than the plan's
    replicas, and slower); None when that is what the plan has, or no function size holds them."""
    if not plan.remote:
        return None
    need = round_up(len(plan.remote) * request.expert_bytes / GIB + PROCESS_GB, limits.memory_step_gb)
    memory = max(limits.remote_memory_gb[0], need)
    if len(plan.replicas) == 1 and memory >= plan.memory_gb:
        return None
    if memory > limits.remote_memory_gb[1]:
        return None
    return LayerPlan(plan.remote, memory, (plan.remote,))


@dataclass(frozen=True, slots=True)
class _Option:
    kind: str  # "plan", "running", "packed" or "local"
    plan: LayerPlan
    remote_cost: float
    main_s: float
    prefill: float
    decode: float
    starts: float  # modelled $ of the functions it starts
    held_gb: float  # memory of the functions it uses: the running ones it is routed to and the new ones
    new_gb: float  # memory of the functions it starts


def _option(kind, request, layer, plan, tokens, profile, prices, running, start_one: float) -> _Option:
    """`start_one`: the modelled $ of starting one function of the plan's memory."""
    started, held = layer_functions(layer, plan, running)
    local = np.ones((1, request.experts), dtype=bool)
    local[0, list(plan.remote)] = False
    stats = stats_array([PartStats.of(layer, [list(p) for p in plan.replicas], tokens)])
    grid = np.array([plan.memory_gb if plan.remote else 0.0])
    t = terms(request, np.array([layer]), local, stats, tokens, profile, prices, grid)
    return _Option(kind, plan, float(t.remote_cost[0, 0]), float(t.main_s[0, 0]), float(t.prefill[0, 0]),
                   float(t.decode[0, 0]), started * start_one, held, started * plan.memory_gb)  # fmt: skip


Score = tuple[bool, bool, float]


def _search(
    options: list[list[_Option]],
    score: Callable[[list[int]], Score],
    better: Callable[[Score, Score], bool],
    exhaustive_up_to: int,
) -> tuple[list[int], Score]:
    """The best choice of one option per layer: all combinations when there are at most `exhaustive_up_to`, else
    the best of coordinate descents started from the plan's own choice and from each kind on every layer."""
    if math.prod(len(o) for o in options) <= exhaustive_up_to:
        found = None
        for combo in itertools.product(*(range(len(o)) for o in options)):
            s = score(list(combo))
            if found is None or better(s, found[1]):
                found = (list(combo), s)
        return found
    starts = [[0] * len(options)]
    for kind in ("running", "packed", "local"):
        start = [next((c for c, o in enumerate(opts) if o.kind == kind), 0) for opts in options]
        if start not in starts:
            starts.append(start)
    found = None
    for start in starts:
        choice, best = start, score(start)
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
        if found is None or better(best, found[1]):
            found = (choice, best)
    return found


def prefer_running(
    request: Request,
    planned: list[LayerPlan],
    running: list[RunningFunction],
    profile: Profile,
    prices: Prices,
    limits: Limits,
    keep_alive_s: float = 0.0,
    sharing: float = 1.0,
    budget_gb: float | None = None,
    running_gb: float | None = None,
    price_evictions: bool = True,
    exhaustive_up_to: int = EXHAUSTIVE_UP_TO,
) -> WarmChoice:
    """The plan with each layer on its own new functions, on the running ones, in one replica, or local: whichever
    fits `budget_gb` (the functions' memory at once; None: no limit), keeps the SLO (or violates it least) and
    costs least with the starts priced, and (`price_evictions`) the restarts of the running functions its new
    ones evict from the budget. `running_gb`: the memory all running functions hold (default: the sum over
    `running`; pass the per-function total when one function hosts several layers)."""
    tokens = Tokens.of(request)
    if running_gb is None:
        running_gb = sum(f.memory_gb for f in running)

    def evicted(picked: list[_Option]) -> float:
        """GB of running functions the picked options' new functions push out of the budget."""
        if budget_gb is None:
            return 0.0
        return max(0.0, min(running_gb, running_gb + sum(o.new_gb for o in picked) - budget_gb))

    def starts_cost(picked: list[_Option]) -> float:
        """Modelled $ of the picked options' new functions and (price_evictions) of the restarts they cause."""
        pushed_out = evicted(picked) if price_evictions else 0.0
        restarts = start_cost(pushed_out, profile, prices, keep_alive_s, sharing) if pushed_out > 0 else 0.0
        return sum(o.starts for o in picked) + restarts

    options: list[list[_Option]] = []
    for i, plan in enumerate(planned):
        candidates = [
            ("plan", plan),
            ("running", running_layer(i, running)),
            ("packed", packed_layer(plan, request, limits)),
        ]
        candidates.append(("local", LayerPlan()))
        layer_options: list[_Option] = []
        for kind, candidate in candidates:
            if candidate is None or any(o.plan == candidate for o in layer_options):
                continue
            start_one = start_cost(candidate.memory_gb, profile, prices, keep_alive_s, sharing)
            layer_options.append(_option(kind, request, i, candidate, tokens, profile, prices, running, start_one))
        options.append(layer_options)

    def score(choice: list[int]) -> tuple[bool, bool, float]:
        """(fits the budget, meets the SLO, $ when both, else the SLO violation, else the memory held)."""
        picked = [options[i][c] for i, c in enumerate(choice)]
        held = sum(o.held_gb for o in picked)
        if budget_gb is not None and held > budget_gb + 1e-9:
            return False, False, held
        gpu_gb, cpu_gb = main_memory_gb(request, [o.plan.remote for o in picked], limits)
        rate = prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb
        ttft, tpot = sum(o.prefill for o in picked), sum(o.decode for o in picked)
        if ttft <= request.slo_ttft_s and tpot <= request.slo_tpot_s:
            remote = sum(o.remote_cost for o in picked)
            return True, True, remote + starts_cost(picked) + rate * sum(o.main_s for o in picked)
        return True, False, ttft / request.slo_ttft_s + tpot / request.slo_tpot_s

    def better(a: tuple[bool, bool, float], b: tuple[bool, bool, float]) -> bool:
        return a[:2] > b[:2] or (a[:2] == b[:2] and a[2] < b[2] * (1 - 1e-9))

    choice, best = _search(options, score, better, exhaustive_up_to)
    picked = [options[i][c] for i, c in enumerate(choice)]
    layers = [o.plan for o in picked]
    gpu_gb, cpu_gb = main_memory_gb(request, [p.remote for p in layers], limits)
    return WarmChoice(
        layers,
        gpu_gb,
        cpu_gb,
        estimate(request, layers, profile, prices, limits, tokens),
        best[1],
        best[0],
        sum(new_functions(i, p, running) for i, p in enumerate(layers)),
        [i for i, c in enumerate(choice) if options[i][c].kind == "running"],
        starts_cost(picked),
        evicted(picked),
    )
