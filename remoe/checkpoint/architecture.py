"""What Remoe needs to know about a transformers MoE architecture, read off a meta-device skeleton.

The skeleton is the unmodified Hugging Face model built on the meta device (no memory). Its experts
modules are the ones transformers dispatches through `ALL_EXPERTS_FUNCTIONS`; their classes are reused
to compute hosted experts with the architecture's own math.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from remoe.checkpoint.moe_layers import MoELayerLookup
from remoe.checkpoint.shipped_quantization import ShippedQuantization
from remoe.errors import UnsupportedArchitectureError

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# The config field that says how many experts each token uses, by the names model types give it.
_TOP_K_FIELDS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k_experts", "moe_k", "top_k")
# Attributes that transformers' `@use_experts_implementation` sets on every experts module it wraps.
_EXPERTS_INTERFACE_ATTRS = ("has_gate", "has_bias", "is_transposed", "is_concatenated", "num_experts")


def is_experts_module(module: torch.nn.Module) -> bool:
    return all(hasattr(module, a) for a in _EXPERTS_INTERFACE_ATTRS)


@dataclass(frozen=True, slots=True)
class MoELayer:
    """One decoder layer's routed experts: where the module sits and each expert's tensor shapes."""

    layer: int  # decoder layer index (DeepSeek's dense first layers have none)
    path: str  # e.g. "model.layers.3.mlp.experts"
    num_experts: int
    param_shapes: dict[str, tuple[int, ...]]  # per-expert shape of each parameter (without the E dim)

    def param_path(self, name: str) -> str:
        return f"{self.path}.{name}"


@dataclass
class Architecture(MoELayerLookup):
    config: PretrainedConfig
    skeleton: PreTrainedModel  # on the meta device; routed-expert parameters are never materialised
    moe_layers: list[MoELayer]

    @classmethod
    def from_config(
        cls, config: PretrainedConfig, dtype: torch.dtype = torch.float32, experts_implementation: str | None = None
    ) -> Architecture:
        ShippedQuantization.from_config(config)  # a quantization Remoe cannot read is refused here, named
        config = copy.deepcopy(config)  # from_config writes dtype (and we the implementation) into it
        if getattr(config, "quantization_config", None) is not None:
            # the checkpoint's tensors are read dequantized (remoe/checkpoint/shipped_quantization.py): the
            # skeleton is the model they make, with no quantized modules in it
            del config.quantization_config
        if experts_implementation is not None:
            config._experts_implementation = experts_implementation
        try:
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except ValueError as e:
            raise UnsupportedArchitectureError(
                f"{config.model_type}: transformers has no causal-LM class for this architecture ({e})"
            ) from e
        skeleton.eval()
        moe_layers = _find_moe_layers(skeleton)
        if not moe_layers:
            raise UnsupportedArchitectureError(
                f"{config.model_type} ({type(skeleton).__name__}): no experts module goes through transformers' "
                "experts interface (transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS), so Remoe cannot "
                "place its experts"
            )
        return cls(config=config, skeleton=skeleton, moe_layers=moe_layers)

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def top_k(self) -> int:
        for name in _TOP_K_FIELDS:
            value = getattr(self.config.get_text_config(), name, None)
            if isinstance(value, int) and value > 0:
                return value
        raise UnsupportedArchitectureError(
            f"{self.model_type}: no experts-per-token field ({', '.join(_TOP_K_FIELDS)})"
        )

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def experts_module(self, layer: int) -> torch.nn.Module:
        return self.skeleton.get_submodule(self.moe_layer(layer).path)

    def expert_param_paths(self) -> set[str]:
        return {m.param_path(n) for m in self.moe_layers for n in m.param_shapes}


def _find_moe_layers(model: PreTrainedModel) -> list[MoELayer]:
    layers: list[MoELayer] = []
    for path, module in model.named_modules():
        if not is_experts_module(module):
            continue
        match = _LAYER_INDEX.search(path + ".")
        if match is None:
            raise UnsupportedArchitectureError(f"{model.config.model_type}: experts module {path!r} has no layer index")
        shapes = {name: tuple(p.shape[1:]) for name, p in module.named_parameters(recurse=False)}
        layers.append(MoELayer(int(match.group(1)), path, int(module.num_experts), shapes))
    layers.sort(key=lambda m: m.layer)
    if len({m.num_experts for m in layers}) > 1:
        raise UnsupportedArchitectureError(
            f"{model.config.model_type}: MoE layers have different expert counts; Remoe expects one count per model"
        )
    return layers


def kv_cache_bytes_per_token(config: PretrainedConfig, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token adds across all layers (full-attention growth; sliding layers cap later)."""
    heads = int(config.num_attention_heads)
    if getattr(config, "kv_lora_rank", None):
        # MLA as transformers 5 runs it caches the compressed latent [kv_lora_rank] plus the shared rope key.
        per_layer = config.kv_lora_rank + config.qk_rope_head_dim
    else:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        per_layer = 2 * kv_heads * head_dim
    return per_layer * int(config.num_hidden_layers) * torch.tensor([], dtype=dtype).element_size()
