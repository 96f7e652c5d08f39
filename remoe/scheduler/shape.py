"""A model's sizes as the cost model needs them: from a checkpoint on disk, or from a transformers config
built on the meta device (the paper's DeepSeek-V2-Lite, without downloading it), or given by hand (GPT2-moe,
which transformers has no class for)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from remoe.scheduler.problem import Request

if TYPE_CHECKING:  # the scheduler service plans from a shape a child process read: it never imports torch
    import torch


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    layers: int  # MoE layers
    experts: int  # routed experts per layer
    top_k: int
    expert_bytes: int  # one routed expert's weights
    hidden_bytes_per_token: int  # one token's hidden state on the wire
    backbone_bytes: int  # every non-routed-expert weight (embeddings, attention, shared experts, head)
    kv_bytes_per_token: int

    def as_dict(self) -> dict:
        return asdict(self)

    def request(self, frequency: np.ndarray | None, n_in: int, n_out: int, **slo) -> Request:
        """A planning request for this model (`frequency` [L, E]; None: every expert equally likely)."""
        if frequency is None:
            frequency = np.full((self.layers, self.experts), 1.0 / self.experts)
        return Request(
            np.asarray(frequency, dtype=np.float64),
            n_in=n_in,
            n_out=n_out,
            top_k=self.top_k,
            expert_bytes=self.expert_bytes,
            hidden_bytes_per_token=self.hidden_bytes_per_token,
            backbone_bytes=self.backbone_bytes,
            kv_bytes_per_token=self.kv_bytes_per_token,
            **slo,
        )


def shape_of_config(name: str, config, dtype: torch.dtype) -> ModelShape:
    """Exact byte sizes of a transformers MoE config, counted on a meta-device skeleton (nothing allocated)."""
    import torch

    from remoe.checkpoint.architecture import Architecture, kv_cache_bytes_per_token

    arch = Architecture.from_config(config, dtype=dtype)
    size = torch.tensor([], dtype=dtype).element_size()
    expert_params = sum(int(np.prod(s)) for s in arch.moe_layers[0].param_shapes.values())
    routed = tuple(m.path + "." for m in arch.moe_layers)
    backbone = sum(  # tied weights once
        p.numel() * size
        for path, p in arch.skeleton.named_parameters(remove_duplicate=True)
        if not path.startswith(routed)
    )
    return ModelShape(
        name,
        len(arch.moe_layers),
        arch.num_experts,
        arch.top_k,
        expert_params * size,
        arch.hidden_size * size,
        backbone,
        kv_cache_bytes_per_token(arch.config, dtype),
    )


def shape_of_model(model_dir: str | Path) -> ModelShape:
    """Sizes of a checkpoint or split directory as stored (its own dtype)."""
    import torch

    from remoe.checkpoint.architecture import kv_cache_bytes_per_token
    from remoe.checkpoint.dtypes import resolve_dtype
    from remoe.checkpoint.weights import open_weights

    weights = open_weights(model_dir)
    arch = weights.arch
    dtype = resolve_dtype(weights.config, "auto")
    layer = arch.layer_indices[0]
    return ModelShape(
        Path(model_dir).name,
        len(arch.layer_indices),
        arch.num_experts,
        arch.top_k,
        weights.expert_nbytes_as(layer, 0, dtype),
        arch.hidden_size * torch.tensor([], dtype=dtype).element_size(),
        weights.backbone_nbytes(),
        kv_cache_bytes_per_token(arch.config, dtype),
    )


# DeepSeek-V2-Lite's published config.json (15.7B parameters at 27 layers, the first dense), without weights.
DEEPSEEK_V2_LITE = dict(
    vocab_size=102400,
    hidden_size=2048,
    intermediate_size=10944,  # the dense first layer
    moe_intermediate_size=1408,
    num_hidden_layers=27,
    num_attention_heads=16,
    num_key_value_heads=16,
    n_shared_experts=2,
    n_routed_experts=64,
    num_experts_per_tok=6,
    routed_scaling_factor=1.0,
    first_k_dense_replace=1,
    kv_lora_rank=512,
    q_lora_rank=None,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    n_group=1,
    topk_group=1,
    topk_method="greedy",
    norm_topk_prob=False,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=False,
    bos_token_id=100000,
    eos_token_id=100001,
)


def deepseek_v2_lite() -> ModelShape:
    """DeepSeek-V2-Lite (26 MoE layers x 64 routed experts, top-6, 2 shared experts), bf16, sized on the meta
    device."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.for_model("deepseek_v2", **DEEPSEEK_V2_LITE)
    return shape_of_config("DeepSeek-V2-Lite", config, torch.bfloat16)


def gpt2_moe() -> ModelShape:
    """The paper's GPT2-moe: GPT-2 small (12 layers, hidden 768, FFN 3072, vocab 50257, 1024 positions) with
    every MLP an 8-expert top-2 MoE, float32. transformers has no class for it, so it is counted by hand."""
    hidden, ffn, layers, vocab, positions, size = 768, 3072, 12, 50257, 1024, 4
    expert = 2 * hidden * ffn + ffn + hidden  # c_fc and c_proj with biases
    attention = 4 * hidden * hidden + 4 * hidden  # qkv + output projection with biases
    per_layer = attention + 4 * hidden + hidden * 8  # two layer norms and the router
    backbone = (vocab + positions) * hidden + layers * per_layer + 2 * hidden  # tied head
    return ModelShape(
        "GPT2-moe", layers, 8, 2, expert * size, hidden * size, backbone * size, 2 * hidden * layers * size
    )


# GPT2-moe's dimensions on qwen3_moe, the closest MoE class transformers has (its experts are SwiGLU: 3 matrices,
# GPT-2's MLP has 2): what the benches run when they need a GPT2-moe-shaped checkpoint.
GPT2_MOE_LIKE = dict(
    vocab_size=50257, hidden_size=768, intermediate_size=3072, moe_intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, num_key_value_heads=12, head_dim=64, num_experts=8, num_experts_per_tok=2,
    max_position_embeddings=1024, norm_topk_prob=True,
)  # fmt: skip


def paper_model_config(name: str, layers: int):
    """transformers config of a paper model's shape with `layers` layers: "deepseek-v2-lite" (deepseek_v2,
    bf16 as published) or "gpt2-moe" (qwen3_moe stand-in, float32). Returns (config, dtype)."""
    import torch
    from transformers import AutoConfig

    if name == "deepseek-v2-lite":
        return AutoConfig.for_model("deepseek_v2", **{**DEEPSEEK_V2_LITE, "num_hidden_layers": layers}), torch.bfloat16
    if name == "gpt2-moe":
        return AutoConfig.for_model("qwen3_moe", **{**GPT2_MOE_LIKE, "num_hidden_layers": layers}), torch.float32
    raise ValueError(f"unknown model {name!r}: deepseek-v2-lite or gpt2-moe")


SHAPES = {"deepseek-v2-lite": deepseek_v2_lite, "gpt2-moe": gpt2_moe}
