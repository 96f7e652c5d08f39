"""Looking up a model's MoE layers by decoder index: shared by the transformers-built Architecture and a lean
function's manifest-built one (remoe/functions/lean_weights.py)."""

from __future__ import annotations


class MoELayerLookup:
    """For a class with `moe_layers`: items with `.layer` and `.num_experts`, sorted by layer."""

    moe_layers: list

    @property
    def num_experts(self) -> int:
        return self.moe_layers[0].num_experts

    @property
    def layer_indices(self) -> list[int]:
        return [m.layer for m in self.moe_layers]

    def moe_layer(self, layer: int):
        for m in self.moe_layers:
            if m.layer == layer:
                return m
        raise KeyError(f"layer {layer} has no routed experts (MoE layers: {self.layer_indices})")
