"""One batched decode step over several requests' own KV caches.

Each request keeps the cache transformers' `generate` would make for it (a DynamicCache, with its sliding-window
layers), so a request joins, leaves or is prefilled alone without touching the others. For a step that decodes
one token of each of B requests, `StepCache` is the cache the model sees: attention layer l hands it the step's
new keys and values [B, heads, 1, d]; row b goes into request b's own cache, which returns that request's keys
[1, heads, L_b, d]; the rows are right-padded to the longest and stacked [B, heads, L, d]. The step's attention
mask (`decode_masks`) hides the padding: at decode every key a request's cache returns is visible to its one
query (causal, and a sliding layer's cache keeps only its window), so the mask is padding only, and each row's
attention equals its request's batch-1 attention. B = requests in the step, L = longest key length.
"""

from __future__ import annotations

import torch
from transformers import Cache, DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING


class StepCache(Cache):
    """The model-facing cache of one decode step: row b of every tensor belongs to `caches[b]`."""

    def __init__(self, caches: list[DynamicCache]) -> None:
        super().__init__(layers=[])
        self.caches = caches

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = [], []
        for row, cache in enumerate(self.caches):
            k, v = cache.update(key_states[row : row + 1], value_states[row : row + 1], layer_idx, *args, **kwargs)
            keys.append(k)
            values.append(v)
        return _pad_stack(keys, key_states), _pad_stack(values, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(cache.get_seq_length(layer_idx) for cache in self.caches)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return max(cache.get_mask_sizes(query_length, layer_idx)[0] for cache in self.caches), 0


class PackedStepCache(Cache):
    """The model-facing cache of a packed step: the step's tokens are one sequence [1, N], request b's
    `lengths[b]` tokens after request b-1's; request b's slice goes into its own cache, and the requests' keys
    are concatenated [1, heads, sum L_b, d]. `packed_masks` keeps each request's queries on its own keys."""

    def __init__(self, caches: list[DynamicCache], lengths: list[int]) -> None:
        super().__init__(layers=[])
        self.caches, self.lengths = caches, lengths

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values, start = [], [], 0
        for cache, n in zip(self.caches, self.lengths, strict=True):
            mine = slice(start, start + n)
            k, v = cache.update(key_states[..., mine, :], value_states[..., mine, :], layer_idx, *args, **kwargs)
            keys.append(k)
            values.append(v)
            start += n
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(cache.get_seq_length(layer_idx) for cache in self.caches)


PACKABLE_TYPES = frozenset({"full_attention", "sliding_attention"})


def packed_masks(
    caches: list[DynamicCache],
    lengths: list[int],
    pasts: list[int],
    types: list[str],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The additive mask(s) of a packed step, [1, 1, N, sum L_b] per attention type: request b's query at
    position pasts[b] + j sees its own cached and new keys at positions <= its own (and, on a sliding layer,
    within the window), nothing of the other requests. Call before the forward (it reads the caches' sizes)."""
    first_layer = _first_layer_of_each_type(types)
    visible = {kind: _packed_mask(caches, lengths, pasts, layer, device) for kind, layer in first_layer.items()}
    first = next(iter(visible.values()))
    if all(v.shape == first.shape and torch.equal(v, first) for v in visible.values()):
        return _additive(first, dtype)[None, None]  # [1, 1, N, K]
    return {kind: _additive(v, dtype)[None, None] for kind, v in visible.items()}


def _packed_mask(caches, lengths, pasts, layer: int, device: torch.device) -> torch.Tensor:
    blocks = []
    for cache, n, past in zip(caches, lengths, pasts, strict=True):
        kv_length, kv_offset = cache.get_mask_sizes(n, layer)
        queries = past + torch.arange(n, device=device)  # [n] absolute positions
        keys = kv_offset + torch.arange(kv_length, device=device)  # [L_b] absolute positions
        visible = keys[None, :] <= queries[:, None]  # [n, L_b] causal
        kind = cache.layers[layer] if layer < len(cache.layers) else None
        if getattr(kind, "is_sliding", False):
            visible &= queries[:, None] - keys[None, :] < kind.sliding_window
        blocks.append(visible)
    return torch.block_diag(*blocks)  # [N, sum L_b]: each request's queries on its own keys only


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as attention adds it: 0 where visible, the dtype's minimum elsewhere (same shape)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, torch.finfo(dtype).min)


def _pad_stack(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """[1, h, L_b, d] each -> [B, h, max L_b, d], zeros after each row's end (the mask hides them): one
    zeroed buffer and a copy per row (fewer calls than padding each row and concatenating)."""
    longest = max(t.shape[-2] for t in rows)
    if all(t.shape[-2] == longest for t in rows):
        return torch.cat(rows, dim=0)
    out = like.new_zeros((len(rows), rows[0].shape[1], longest, rows[0].shape[-1]))
    for row, t in enumerate(rows):
        out[row, :, : t.shape[-2]].copy_(t[0])
    return out


def layer_types(config) -> list[str]:
    """Each decoder layer's attention type as the model's config names it (one type when it names none)."""
    text = config.get_text_config()
    types = getattr(text, "layer_types", None)
    return list(types) if types else ["full_attention"] * int(text.num_hidden_layers)


def decode_masks(
    caches: list[DynamicCache], types: list[str], dtype: torch.dtype, device: torch.device
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The additive attention mask(s) of one decode step: [B, 1, 1, L] per attention type, 0 on each row's keys
    and the dtype's minimum on its padding. One tensor when every type gives each row the same key length;
    else a dict by type (models with several attention types read it so)."""
    first_layer = _first_layer_of_each_type(types)
    lengths = {kind: [c.get_mask_sizes(1, layer)[0] for c in caches] for kind, layer in first_layer.items()}
    masks = {kind: _padding_mask(lens, dtype, device) for kind, lens in lengths.items()}
    if len({tuple(lens) for lens in lengths.values()}) == 1:
        return next(iter(masks.values()))
    return masks


def _first_layer_of_each_type(types: list[str]) -> dict[str, int]:
    """A representative layer per attention type: every layer of a type has the same key layout."""
    first: dict[str, int] = {}
    for layer, kind in enumerate(types):
        first.setdefault(kind, layer)
    return first


def _padding_mask(lengths: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    longest = max(lengths)
    keys = torch.arange(longest, device=device)  # [L]
    valid = keys[None, :] < torch.tensor(lengths, device=device)[:, None]  # [B, L]
    return _additive(valid, dtype)[:, None, None, :]  # [B, 1, 1, L]


def batching_unsupported(config: PretrainedConfig) -> str | None:
    """Why this model's decode steps cannot be batched over requests' own caches (None: they can). They can
    when every layer of its cache is one StepCache stacks: a plain key/value layer, full or sliding window.
    Linear-attention and recurrent state, sparse-attention indexer keys (DSA: an indexer would rank the padding
    too), compressed caches of a model's own layer kinds, or a cache class of the model's own are not stacked."""
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is not None and not model_class._supports_default_dynamic_cache():
        return f"{model_class.__name__} keeps a cache of its own (generate does not give it a DynamicCache)"
    cache = DynamicCache(config=config)
    other = sorted({type(layer).__name__ for layer in cache.layers if type(layer) not in _STACKED_LAYERS})
    if other:
        return f"its cache has {', '.join(other)} layers, which are not plain key/value attention layers"
    return None


_STACKED_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)  # exactly these: a subclass may keep more state


def batching_report(config: PretrainedConfig) -> str:
    """One line for `remoe inspect`: how the backbone service serves concurrent requests of this model."""
    reason = batching_unsupported(config)
    if reason is None:
        return "batching: concurrent requests share each decode step (continuous batching)"
    return f"batching: none, each request runs its own forwards ({reason})"
