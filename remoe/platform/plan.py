"""Placement plans with functions: which experts stay on the expert services and which go remote.

Until the predictor and scheduler produce real plans, `remote_ratio_plan` makes one from a ratio: in
every MoE layer the highest-numbered `round(ratio * E)` experts go to that layer's function (one function
per layer, as in the paper; every second one with two replicas), the rest round-robin over the services.
A plan file (JSON, `functions_to_json`) names the functions explicitly instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from remoe.experts.cache import ExpertId
from remoe.experts.placement import Placement, function_destination, services_round_robin
from remoe.platform.base import FunctionSpec, functions_from_json
from remoe.settings import BackboneSettings, default_of

DEFAULT_FUNCTION_MEMORY_MB: int = default_of(BackboneSettings, "function_memory_mb")


def remote_ratio_functions(
    moe_layers: list[int], num_experts: int, ratio: float, memory_mb: int = DEFAULT_FUNCTION_MEMORY_MB
) -> list[FunctionSpec]:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"remote ratio must be in [0, 1], got {ratio}")
    remote = round(ratio * num_experts)
    if remote == 0:
        return []
    return [
        FunctionSpec(
            name=f"layer-{layer}",
            experts=tuple((layer, e) for e in range(num_experts - remote, num_experts)),
            memory_mb=memory_mb,
            replicas=2 if i % 2 else 1,
        )
        for i, layer in enumerate(moe_layers)
    ]


def check_functions(functions: list[FunctionSpec], moe_layers: list[int], num_experts: int) -> dict[ExpertId, str]:
    """Each expert of a plan's functions -> its function; ValueError when an expert is in two functions or is not
    the model's."""
    remote: dict[ExpertId, str] = {}
    for spec in functions:
        for expert in spec.experts:
            if expert in remote:
                raise ValueError(f"expert {expert} is in both {remote[expert]} and {spec.name}")
            if expert[0] not in moe_layers or not 0 <= expert[1] < num_experts:
                raise ValueError(f"function {spec.name}: expert {expert} is not in the model")
            remote[expert] = spec.name
    return remote


def plan_with_functions(
    moe_layers: list[int], num_experts: int, services: list[str], functions: list[FunctionSpec]
) -> Placement:
    """Functions take their experts; every other expert goes round-robin to the services."""
    remote = check_functions(functions, moe_layers, num_experts)
    rest = [(layer, e) for layer in moe_layers for e in range(num_experts) if (layer, e) not in remote]
    destinations = services_round_robin(rest, services)
    for spec in functions:
        destinations[function_destination(spec.name)] = list(spec.experts)
    return Placement(destinations)


def load_plan_file(path: str | Path) -> list[FunctionSpec]:
    path = Path(path)
    try:
        return functions_from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ValueError(f"plan file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"plan file {path}: not JSON ({e})") from None


def functions_to_proto(specs: list[FunctionSpec]) -> list:
    """FunctionSpecs -> backbone PlanFunction messages (a request's functions)."""
    from remoe.proto import backbone_pb2

    return [
        backbone_pb2.PlanFunction(
            name=s.name, layers=[x[0] for x in s.experts], experts=[x[1] for x in s.experts], memory_mb=s.memory_mb
        )
        for s in specs
    ]


def functions_from_proto(messages) -> list[FunctionSpec]:
    """PlanFunction messages -> FunctionSpecs; ValueError names what is wrong."""
    specs = []
    for m in messages:
        if len(m.layers) != len(m.experts):
            raise ValueError(f"function {m.name!r}: {len(m.layers)} layers for {len(m.experts)} experts")
        specs.append(FunctionSpec(m.name, tuple(zip(m.layers, m.experts, strict=True)), int(m.memory_mb)))
    return specs
