"""Seeded random-init MoE checkpoints with a real byte-level BPE tokenizer, made offline.

Each supported architecture gets small defaults that keep its distinguishing features: Qwen2-MoE's
shared expert and shared-expert gate, DeepSeek-V2's MLA attention with a dense first layer and shared
experts, GPT-OSS's biases, transposed layout, clamped SwiGLU and sliding-window layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from remoe.model.tokenizer import train_bpe_tokenizer


@dataclass(slots=True)
class TinySpec:
    arch: str
    layers: int = 2
    experts: int = 8
    top_k: int = 2
    hidden: int = 64
    vocab: int = 512
    seed: int = 0
    initializer_range: float = 0.1  # wider than 0.02 so logits have clear winners (no greedy near-ties)
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCH_OVERRIDES:
            raise ValueError(f"unknown --arch {self.arch!r}; choose one of {', '.join(sorted(ARCH_OVERRIDES))}")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"--top-k must be between 1 and --experts ({self.experts}), got {self.top_k}")
        if self.hidden % 16 or self.hidden < 32:
            raise ValueError(f"--hidden must be a multiple of 16 and >= 32, got {self.hidden}")
        if self.layers < 1 or (self.arch == "deepseek_v2" and self.layers < 2):
            raise ValueError(f"--layers too small for {self.arch}: {self.layers}")
        if self.vocab < 300:
            raise ValueError(f"--vocab must be >= 300 (256 bytes + merges + specials), got {self.vocab}")


def _mixtral(s: TinySpec) -> dict:
    return dict(num_local_experts=s.experts, intermediate_size=2 * s.hidden)


def _qwen2_moe(s: TinySpec) -> dict:
    return dict(
        num_experts=s.experts,
        moe_intermediate_size=s.hidden,
        shared_expert_intermediate_size=2 * s.hidden,
        intermediate_size=2 * s.hidden,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=False,
    )


def _qwen3_moe(s: TinySpec) -> dict:
    return dict(
        num_experts=s.experts,
        moe_intermediate_size=s.hidden,
        intermediate_size=2 * s.hidden,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        head_dim=s.hidden // 4,
    )


def _olmoe(s: TinySpec) -> dict:
    return dict(num_experts=s.experts, intermediate_size=s.hidden)


def _deepseek_v2(s: TinySpec) -> dict:
    return dict(
        n_routed_experts=s.experts,
        num_key_value_heads=s.hidden // 16,  # MLA: one KV head per attention head
        n_shared_experts=2,
        first_k_dense_replace=1,  # DeepSeek-V2-Lite: the first layer is a dense MLP
        moe_intermediate_size=s.hidden,
        intermediate_size=2 * s.hidden,
        kv_lora_rank=s.hidden // 2,
        q_lora_rank=None,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_group=1,
        topk_group=1,
        topk_method="greedy",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _gpt_oss(s: TinySpec) -> dict:
    return dict(
        num_local_experts=s.experts,
        intermediate_size=s.hidden,
        head_dim=16,
        sliding_window=16,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(s.layers)],
        rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
    )


ARCH_OVERRIDES = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
    "deepseek_v2": _deepseek_v2,
    "gpt_oss": _gpt_oss,
}
SUPPORTED_ARCHS = sorted(ARCH_OVERRIDES)


def build_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the small corpus shipped with Remoe: deterministic, offline."""
    text = resources.files("remoe.model").joinpath("data/corpus.txt").read_text()
    return train_bpe_tokenizer(text.splitlines(), vocab)


def make_tiny_model(spec: TinySpec, out: str | Path, layout: str = "per-expert") -> Path:
    """Write a seeded tiny checkpoint; `layout` is "per-expert" (save_pretrained's default) or "fused"."""
    if layout not in ("per-expert", "fused"):
        raise ValueError(f"layout must be 'per-expert' or 'fused', got {layout!r}")
    out = Path(out)
    tokenizer = build_tokenizer(spec.vocab)
    heads = spec.hidden // 16
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        num_experts_per_tok=spec.top_k,
        max_position_embeddings=1024,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(ARCH_OVERRIDES[spec.arch](spec))
    config = AutoConfig.for_model(spec.arch, **fields)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, save_original_format=(layout == "per-expert"))
    tokenizer.save_pretrained(out)
    return out
