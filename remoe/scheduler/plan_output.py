"""A plan as the rest of Remoe and its users see it: the function specs the platform deploys (one function per
replica, so each replica hosts exactly its LPT share of the layer's experts), a JSON document that
`remoe up --plan` loads, and a readable summary."""

from __future__ import annotations

from remoe.platform.base import FunctionSpec, content_name, functions_to_json
from remoe.scheduler.estimate import LayerPlan
from remoe.scheduler.planner import Plan
from remoe.scheduler.problem import Request


def plan_functions(layers: list[LayerPlan], moe_layers: list[int]) -> list[FunctionSpec]:
    """`moe_layers`: the decoder layer index of each planned layer (DeepSeek's first layer is dense)."""
    if len(moe_layers) != len(layers):
        raise ValueError(f"the plan has {len(layers)} layers, the model {len(moe_layers)} MoE layers")
    specs = []
    for layer, planned in zip(moe_layers, layers, strict=True):
        memory_mb = int(round(planned.memory_gb * 1024))
        for part in planned.replicas:
            experts = tuple((layer, e) for e in part)
            specs.append(FunctionSpec(content_name(experts, memory_mb), experts, memory_mb))
    return specs


def functions_of_reply(reply) -> list[FunctionSpec]:
    """The functions of the scheduler service's PlanReply."""
    layers = [
        LayerPlan(tuple(p.remote), p.memory_gb, tuple(tuple(r.experts) for r in p.replicas)) for p in reply.layers
    ]
    return plan_functions(layers, [p.layer for p in reply.layers])


def plan_to_json(plan: Plan, request: Request, moe_layers: list[int]) -> dict:
    est = plan.estimate
    return {
        **functions_to_json(plan_functions(plan.layers, moe_layers)),
        "plan": {
            "feasible": plan.feasible,
            "binding": plan.binding,
            "main_gpu_gb": plan.main_gpu_gb,
            "main_cpu_gb": plan.main_cpu_gb,
            "predicted": {
                "ttft_s": est.ttft_s,
                "tpot_s": est.tpot_s,
                "cost_main": est.cost_main,
                "cost_remote": est.cost_remote,
                "cost": est.cost,
            },
            "layers": [
                {
                    "layer": layer,
                    "remote": list(p.remote),
                    "memory_gb": p.memory_gb,
                    "replicas": [list(r) for r in p.replicas],
                }
                for layer, p in zip(moe_layers, plan.layers, strict=True)
            ],
            "request": {
                "n_in": request.n_in,
                "n_out": request.n_out,
                "slo_ttft_s": request.slo_ttft_s,
                "slo_tpot_s": request.slo_tpot_s,
                "confidence": request.confidence,
            },
            "report": {k: v for k, v in plan.report.items() if k != "counts_tried"},
        },
    }


def describe(plan: Plan, request: Request, moe_layers: list[int]) -> str:
    est = plan.estimate
    slo = lambda s: "none" if s == float("inf") else f"{s * 1e3:.1f} ms"  # noqa: E731
    lines = [
        f"{'meets' if plan.feasible else 'CANNOT MEET'} the SLO (TTFT {slo(request.slo_ttft_s)}, TPOT "
        f"{slo(request.slo_tpot_s)}); binding: {plan.binding}",
        f"predicted TTFT {est.ttft_s * 1e3:.1f} ms, TPOT {est.tpot_s * 1e3:.2f} ms "
        f"(worst case at {request.confidence:.0%} confidence, {request.n_in} prompt + {request.n_out} new tokens)",
        f"predicted cost ${est.cost:.3g} per request: main ${est.cost_main:.3g} "
        f"({plan.main_gpu_gb:g} GB GPU + {plan.main_cpu_gb:g} GB CPU), functions ${est.cost_remote:.3g}",
        "layer  remote experts                       memory  replicas (experts each)",
    ]
    for layer, p in zip(moe_layers, plan.layers, strict=True):
        if not p.remote:
            lines.append(f"{layer:5d}  (all local)")
            continue
        experts = ",".join(map(str, p.remote))
        experts = experts if len(experts) <= 35 else experts[:32] + "..."
        shares = " ".join(f"[{len(r)}]" for r in p.replicas)
        lines.append(f"{layer:5d}  {experts:35s}  {p.memory_gb:4.1f} GB  {len(p.replicas)} {shares}")
    if not plan.report.get("convex", True):
        lines.append(f"note: {plan.report['convexity']}")
    return "\n".join(lines)
