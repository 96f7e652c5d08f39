"""Map a checkpoint's on-disk keys to the model's parameters, using transformers' own conversion rules.

Backbone keys only get renamed (e.g. Mixtral's `block_sparse_moe` -> `mlp`). Routed-expert parameters come
in one of two layouts:
- fused: `...experts.gate_up_proj [E, 2I, H]` on disk, read one expert with `get_slice(key)[e]`;
- per expert: `...experts.{e}.w1.weight` etc., merged the way transformers' `WeightConverter` says
  (MergeModulelist over experts, then an optional Concatenate of the parts).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    Concatenate,
    MergeModulelist,
    WeightConverter,
    WeightRenaming,
    apply_renamings,
    rename_source_key,
)

from remoe.checkpoint.architecture import Architecture
from remoe.checkpoint.expert_sources import ExpertSource, FusedSource, PerExpertSource
from remoe.checkpoint.files import Checkpoint
from remoe.errors import MissingWeightError, UnsupportedArchitectureError

log = logging.getLogger(__name__)
# Keys of quantized checkpoints (MXFP4 blocks/scales, FP8 scales): refuse rather than mis-load.
_QUANTIZED_KEY = re.compile(r"(_blocks|_scales|weight_scale_inv|weight_scale)$")


@dataclass
class WeightMap:
    backbone: dict[str, str] = field(default_factory=dict)  # model parameter/buffer name -> checkpoint key
    experts: dict[tuple[int, str], ExpertSource] = field(default_factory=dict)  # (layer, param) -> source


def build_weight_map(ckpt: Checkpoint, arch: Architecture) -> WeightMap:
    model = arch.skeleton
    meta_state = model.state_dict()
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    expert_params = arch.expert_param_paths()
    path_to_layer = {m.path: m.layer for m in arch.moe_layers}

    wmap = WeightMap()
    parts: dict[tuple[int, str], dict[int, str]] = {}  # (layer, param) -> part index -> template
    converter_of: dict[tuple[int, str], WeightConverter] = {}
    for key in ckpt.keys():
        if _QUANTIZED_KEY.search(key):
            raise UnsupportedArchitectureError(
                f"{ckpt.file_of(key)}: {key!r} is a quantized tensor; Remoe reads unquantized checkpoints only"
            )
        target, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta_state)
        if target not in meta_state and key in meta_state:
            target, pattern = key, None
        if target not in meta_state:
            log.warning("%s: ignoring tensor %r, which the model does not use", ckpt.file_of(key), key)
            continue
        if target not in expert_params:
            if pattern is not None:
                raise UnsupportedArchitectureError(f"{arch.model_type}: backbone tensor {key!r} needs a conversion")
            wmap.backbone[target] = key
            continue
        experts_path, _, param = target.rpartition(".")
        slot = (path_to_layer[experts_path], param)
        if pattern is None:
            wmap.experts[slot] = FusedSource(key)
            continue
        converter = next(c for c in converters if pattern in c.source_patterns)
        part = converter.source_patterns.index(pattern)
        parts.setdefault(slot, {})[part] = _expert_template(apply_renamings(key, renamings), key, pattern)
        converter_of[slot] = converter

    for slot, by_part in parts.items():
        converter = converter_of[slot]
        if sorted(by_part) != list(range(len(converter.source_patterns))):
            raise MissingWeightError(f"{ckpt.path}: layer {slot[0]} expert tensor {slot[1]!r} misses parts")
        wmap.experts[slot] = PerExpertSource(tuple(by_part[i] for i in sorted(by_part)), _concat_dim(converter))
    _check_complete(ckpt, arch, wmap, meta_state)
    return wmap


def _expert_template(renamed_key: str, original_key: str, pattern: str) -> str:
    """Turn `...experts.3.w1.weight` into `...experts.{e}.w1.weight` (in on-disk naming)."""
    head, _, tail = pattern.partition("*")
    match = re.search(re.escape(head) + r"(\d+)" + re.escape(tail) + "$", renamed_key)
    if match is None or not original_key.endswith(match.group(1) + tail):
        raise UnsupportedArchitectureError(f"cannot find the expert index in checkpoint key {original_key!r}")
    cut = len(original_key) - len(match.group(1) + tail)
    return original_key[:cut].replace("{", "{{").replace("}", "}}") + "{e}" + tail.replace("{", "{{").replace("}", "}}")


def _concat_dim(converter: WeightConverter) -> int | None:
    ops = converter.operations
    if not ops or not isinstance(ops[0], MergeModulelist) or ops[0].dim != 0:
        raise UnsupportedArchitectureError(f"per-expert layout with conversion {ops!r} is not supported")
    if len(ops) == 1:
        return None
    if len(ops) == 2 and isinstance(ops[1], Concatenate) and ops[1].dim >= 1:
        return ops[1].dim - 1  # the merged tensor has the expert dim first
    raise UnsupportedArchitectureError(f"per-expert layout with conversion {ops!r} is not supported")


def _check_complete(ckpt: Checkpoint, arch: Architecture, wmap: WeightMap, meta_state: dict) -> None:
    tied = set(arch.skeleton.all_tied_weights_keys)
    expert_params = arch.expert_param_paths()
    persistent = {n for n in meta_state if n not in expert_params and n not in tied}
    missing = sorted(persistent - set(wmap.backbone))
    if missing:
        raise MissingWeightError(
            f"{ckpt.path}: {arch.model_type} checkpoint lacks backbone tensor(s) {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    for moe in arch.moe_layers:
        for param in moe.param_shapes:
            source = wmap.experts.get((moe.layer, param))
            if source is None:
                raise MissingWeightError(
                    f"{ckpt.path}: no tensor for {moe.param_path(param)} (layer {moe.layer} experts) in any file"
                )
            for e in range(moe.num_experts):
                for key in source.keys(e):
                    ckpt.file_of(key)  # raises MissingWeightError naming the key
