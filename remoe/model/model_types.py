"""Every MoE model type the pinned transformers has, found by inspecting transformers, and a seeded tiny config
for each: what the support survey (remoe/survey/type_survey.py) builds and checks.

A model type counts when transformers maps it to a causal-LM class whose modeling module routes its experts
through `@use_experts_implementation` (the experts interface Remoe places experts through). A composite
(multimodal) type is reported by its text model type, which has its own causal-LM class.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import model_type_to_module_name
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

_EXPERTS_DECORATOR = "use_experts_implementation"
TINY_LAYERS = 3  # at least: more when the per-layer kinds (attention, MLP) need more layers to all appear


@dataclass(frozen=True, slots=True)
class MoEModelType:
    model_type: str
    causal_lm_class: str
    text_model_type: str | None = None  # a composite type's text model (its causal-LM class is the same)

    @property
    def composite(self) -> bool:
        return self.text_model_type is not None


def moe_model_types() -> list[MoEModelType]:
    """Every causal-LM model type whose modeling code uses transformers' experts interface, sorted."""
    found = []
    for model_type, cls in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()):
        module = model_type_to_module_name(model_type)
        try:
            source = inspect.getsource(importlib.import_module(f"transformers.models.{module}.modeling_{module}"))
        except (ImportError, OSError):  # a model whose optional dependency is missing: not buildable here
            continue
        if _EXPERTS_DECORATOR in source:
            found.append((model_type, cls))
    classes = {}
    for model_type, cls in found:
        classes.setdefault(cls, []).append(model_type)
    result = []
    for model_type, cls in found:
        config_cls = type(AutoConfig.for_model(model_type))
        text = None
        if getattr(config_cls, "sub_configs", None) and "text_config" in config_cls.sub_configs:
            text = next((t for t in classes[cls] if t != model_type), None) or _text_type(model_type)
        result.append(MoEModelType(model_type, cls, text))
    return result


def _text_type(model_type: str) -> str | None:
    sub = AutoConfig.for_model(model_type).text_config
    return getattr(sub, "model_type", None)


# Sizes for every tiny model; an attribute is set only when the model's config has it (and it is not None).
_SIZES: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=64,
    shared_expert_intermediate_size=128,
    shared_experts_intermediate_size=64,
    moe_shared_expert_intermediate_size=64,
    shared_intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=8,
    num_local_experts=8,
    n_routed_experts=8,
    moe_num_experts=8,
    num_experts_per_tok=2,
    num_experts_per_token=2,
    moe_topk=2,
    top_k_experts=2,
    max_position_embeddings=1024,
    model_max_length=1024,
    initializer_range=0.1,  # wider than 0.02 so logits have clear winners (no greedy near-ties)
    tie_word_embeddings=False,
    sliding_window=16,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
    num_expert_group=1,
    decoder_sparse_step=1,
    moe_layer_freq=1,
    # MLA (DeepSeek-style attention)
    kv_lora_rank=32,
    q_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    qk_head_dim=24,
    # linear attention, Mamba and gated-delta-net layers
    linear_head_dim=16,
    linear_num_heads=4,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    mamba_n_heads=8,
    mamba_d_head=16,
    mamba_d_state=16,
    mamba_num_heads=8,
    mamba_head_dim=16,
    ssm_state_size=16,
    n_groups=1,
    mamba_n_groups=1,
    # sparse-attention indexers
    index_n_heads=2,
    index_head_dim=16,
    index_topk=8,
    o_lora_rank=32,
    o_groups=2,
)

_VOCAB_PADDING = 64  # rows a padded-vocabulary model (inkling2) has past its real vocabulary

# Set even where the default config has None (a None head_dim is one to derive, yet some models read it as is).
_SET_WHEN_NONE = ("head_dim", "num_experts_per_tok")

# What the generic sizes cannot know: a model type's own constraints between fields.
_DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
_TYPE_OVERRIDES: dict[str, dict[str, Any]] = {
    "deepseek_v3": dict(rope_parameters=_DEFAULT_ROPE, head_dim=8),  # its rope runs over head_dim = qk_rope
    "axk1": dict(rope_parameters=_DEFAULT_ROPE, head_dim=8),
    "dots1": dict(n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1),  # as dots.llm1 (None by default)
    "dots3_note_text": dict(head_dim=24),  # its sliding layers: qk_nope + qk_rope
    "glm4_moe_lite": dict(rope_parameters=_DEFAULT_ROPE),
    "gemma4_text": dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=64),
    "granitemoehybrid": dict(layer_types=["mamba", "attention", "mamba"]),
    "lfm2_moe": dict(num_dense_layers=1, layer_types=["conv", "full_attention", "conv"]),  # None by default
    # its indexed-attention layers need an indexer (None by default)
    "qwen4_exp_text": dict(
        indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=8, indexer_compress_ratio=4
    ),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "zaya": dict(num_experts_per_tok=1),  # the only value it supports
}


def _type_overrides(model_type: str) -> dict[str, Any]:
    """The hand-made tiny settings of the test suite's own architectures (remoe/model/tiny.py), else the table."""
    from remoe.model.tiny import ARCH_OVERRIDES, TinySpec

    if model_type in ARCH_OVERRIDES:
        return ARCH_OVERRIDES[model_type](TinySpec(model_type, layers=TINY_LAYERS))
    return _TYPE_OVERRIDES.get(model_type, {})


def tiny_config(model_type: str, vocab_size: int, special_ids: dict[str, int | None]) -> PretrainedConfig:
    """A small config of `model_type` keeping its features: every per-layer kind (attention kinds, dense and
    sparse MLPs) appears in some layer, shared experts stay, only the sizes shrink."""
    values = AutoConfig.for_model(model_type).to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type", "dtype"):
        values.pop(key, None)
    _shrink(values)
    _shrink_layers(values)
    values.update(vocab_size=vocab_size, **special_ids)
    if "unpadded_vocab_size" in values:  # the head's real rows; the embedding is padded past them
        values.update(unpadded_vocab_size=vocab_size, vocab_size=vocab_size + _VOCAB_PADDING)
    values.update(_type_overrides(model_type))
    _one_kv_head_per_head(values)
    return AutoConfig.for_model(model_type, **values)


def _one_kv_head_per_head(values: dict[str, Any]) -> None:
    if values.get("num_key_value_heads") and values.get("kv_lora_rank"):
        values["num_key_value_heads"] = values["num_attention_heads"]  # MLA: one KV head per attention head


def _shrink(values: dict[str, Any]) -> None:
    for key, size in _SIZES.items():
        current = values.get(key)
        if key not in values or isinstance(current, (list, dict)) or (current is None and key not in _SET_WHEN_NONE):
            continue
        # (a model's fewer dense first layers stay fewer)
        values[key] = min(current, size) if key == "first_k_dense_replace" else size


def _shrink_layers(values: dict[str, Any]) -> None:
    """Keep a few of the layers: the first TINY_LAYERS and, for each per-layer kind list, the first layer of every
    kind, so each kind is in the tiny model; the per-layer lists and per-layer configs follow."""
    old = values.get("num_hidden_layers")
    if not isinstance(old, int):
        return
    lists = [k for k, v in values.items() if isinstance(v, list) and len(v) == old and old > 1]
    keep = set(range(min(old, TINY_LAYERS)))
    for key in lists:
        first: dict[str, int] = {}
        for i, kind in enumerate(values[key]):
            first.setdefault(repr(kind), i)
        keep.update(first.values())
    kept = sorted(keep)
    for key in lists:
        values[key] = [values[key][i] for i in kept]
    per_layer = values.get("per_layer_config")
    if isinstance(per_layer, dict):
        width = len(next(iter(per_layer), "0"))
        remapped = {}
        for new, old_i in enumerate(kept):
            entry = per_layer.get(str(old_i).zfill(width))
            if entry is not None:
                entry = dict(entry)
                _shrink(entry)
                _one_kv_head_per_head(entry)
                remapped[str(new).zfill(width)] = entry
        values["per_layer_config"] = remapped
    values["num_hidden_layers"] = len(kept)
