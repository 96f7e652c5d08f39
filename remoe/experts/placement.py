"""Which destination hosts which routed experts.

A destination is "local" (the backbone's own process), a gRPC address of an expert service, or "function:NAME"
(the serverless function NAME).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from remoe.experts.cache import ExpertId

LOCAL = "local"
FUNCTION_PREFIX = "function:"  # a destination "function:NAME" is the serverless function NAME


def function_destination(name: str) -> str:
    return f"{FUNCTION_PREFIX}{name}"


@dataclass(frozen=True, slots=True)
class Shard:
    """Experts e with e % count == index, in every MoE layer: how `remoe up` splits experts over services."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    def experts(self, moe_layers: list[int], num_experts: int) -> list[ExpertId]:
        return [(layer, e) for layer in moe_layers for e in range(num_experts) if e % self.count == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Placement:
    """destination -> experts it hosts; every (layer, expert) of the model must have exactly one."""

    destinations: dict[str, list[ExpertId]] = field(default_factory=dict)

    def owner_table(self) -> dict[ExpertId, str]:
        owners: dict[ExpertId, str] = {}
        for dest, experts in self.destinations.items():
            for expert in experts:
                if expert in owners:
                    raise ValueError(f"expert {expert} is placed on both {owners[expert]} and {dest}")
                owners[expert] = dest
        return owners

    def check_covers(self, moe_layers: list[int], num_experts: int) -> None:
        owners = self.owner_table()
        missing = [(layer, e) for layer in moe_layers for e in range(num_experts) if (layer, e) not in owners]
        if missing:
            raise ValueError(f"placement leaves experts {missing[:5]} without a destination")

    def summary(self) -> str:
        """Compact JSON: destination -> {layer: [experts]} (what usage reports as the plan used)."""
        out: dict[str, dict[str, list[int]]] = {}
        for dest, experts in self.destinations.items():
            per_layer: dict[str, list[int]] = {}
            for layer, e in experts:
                per_layer.setdefault(str(layer), []).append(e)
            out[dest] = per_layer
        return json.dumps(out, sort_keys=True)


def services_round_robin(experts: list[ExpertId], services: list[str]) -> dict[str, list[ExpertId]]:
    """Spread experts over expert services: expert e goes to services[e % n] (LOCAL when there are none)."""
    targets = services or [LOCAL]
    out: dict[str, list[ExpertId]] = {t: [] for t in targets}
    for layer, e in experts:
        out[targets[e % len(targets)]].append((layer, e))
    return {t: xs for t, xs in out.items() if xs}
