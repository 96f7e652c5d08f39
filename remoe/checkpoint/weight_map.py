"""Map a checkpoint's on-disk keys to the model's parameters, using transformers' own conversion rules.

Backbone keys get renamed (e.g. Mixtral's `block_sparse_moe` -> `mlp`), or converted by transformers' own
`WeightConverter` where the mapping says so (remoe/checkpoint/backbone_conversion.py). Routed-expert parameters come
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
    Interleave,
    MergeModulelist,
    WeightConverter,
    WeightRenaming,
    rename_source_key,
)

from remoe.checkpoint.architecture import Architecture
from remoe.checkpoint.backbone_conversion import BackboneConversion
from remoe.checkpoint.expert_sources import ExpertSource, FusedSource, PerExpertSource
from remoe.checkpoint.files import Checkpoint
from remoe.errors import MissingWeightError, UnsupportedArchitectureError

log = logging.getLogger(__name__)
# Keys of quantized checkpoints (MXFP4 blocks/scales, FP8 scales) left after the dequantizing view
# (remoe/checkpoint/shipped_quantization.py) took those of the config's quantization: refuse rather than mis-load.
_QUANTIZED_KEY = re.compile(r"(_blocks|_scales|weight_scale_inv|weight_scale|_amax|_outer_scale_denominator)$")
# Conversion operations that return a lone unquantized tensor unchanged (its scale sources are absent, and refused)
_IDENTITY_ON_ONE_TENSOR = {"Inkling2LoopDequantizeExperts"}


@dataclass
class WeightMap:
    backbone: dict[str, str] = field(default_factory=dict)  # model parameter/buffer name -> checkpoint key
    experts: dict[tuple[int, str], ExpertSource] = field(default_factory=dict)  # (layer, param) -> source
    converted: dict[str, BackboneConversion] = field(default_factory=dict)  # model name -> its conversion

    def conversions(self) -> list[BackboneConversion]:
        return list({id(c): c for c in self.converted.values()}.values())


def build_weight_map(ckpt: Checkpoint, arch: Architecture) -> WeightMap:
    model = arch.skeleton
    meta_state = model.state_dict()
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    expert_params = arch.expert_param_paths()
    path_to_layer = {m.path: m.layer for m in arch.moe_layers}

    wmap = WeightMap()
    parts: dict[tuple[int, str], dict[int, list[str]]] = {}  # (layer, param) -> part index -> its experts' keys
    converter_of: dict[tuple[int, str], WeightConverter] = {}
    for key in ckpt.keys():
        if _QUANTIZED_KEY.search(key):
            raise UnsupportedArchitectureError(
                f"{ckpt.file_of(key)}: {key!r} is a quantized tensor that config.json's quantization_config does "
                "not describe; Remoe reads unquantized checkpoints and mxfp4 / block-fp8 ones as the hub ships them"
            )
        target, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta_state)
        if target not in meta_state and key in meta_state:
            target, pattern = key, None
        if target not in meta_state:
            log.warning("%s: ignoring tensor %r, which the model does not use", ckpt.file_of(key), key)
            continue
        if target not in expert_params:
            if pattern is None:
                wmap.backbone[target] = key
                continue
            conversion = wmap.converted.get(target)
            if conversion is None:
                converter = next(c for c in converters if pattern in c.source_patterns)
                conversion = BackboneConversion(converter, target)
                for name in conversion.targets:
                    wmap.converted[name] = conversion
            conversion.sources.append((pattern, key))
            continue
        experts_path, _, param = target.rpartition(".")
        slot = (path_to_layer[experts_path], param)
        if pattern is None:
            wmap.experts[slot] = FusedSource(key)
            continue
        converter = next(c for c in converters if pattern in c.source_patterns)
        if not _merges_experts(converter):  # fused on disk, converted row by row
            wmap.experts[slot] = FusedSource(key, _fused_deinterleave_dim(converter))
            continue
        part = converter.source_patterns.index(pattern)
        parts.setdefault(slot, {}).setdefault(part, []).append(key)
        converter_of[slot] = converter

    for slot, by_part in parts.items():
        converter = converter_of[slot]
        if sorted(by_part) != list(range(len(converter.source_patterns))):
            raise MissingWeightError(f"{ckpt.path}: layer {slot[0]} expert tensor {slot[1]!r} misses parts")
        templates = tuple(_expert_template(by_part[i]) for i in sorted(by_part))
        wmap.experts[slot] = PerExpertSource(templates, _concat_dim(converter))
    _check_complete(ckpt, arch, wmap, meta_state)
    return wmap


def _expert_template(keys: list[str]) -> str:
    """Turn the keys of one expert tensor of every expert (`...experts.0.w1.weight`, `...experts.1.w1.weight`, ...)
    into `...experts.{e}.w1.weight`: the expert index is the one dotted name component that differs (a number) across
    them, whatever pattern (glob or regular expression) the conversion mapping matched them with."""
    split = [k.split(".") for k in keys]
    width = len(split[0])
    numeric = [
        i
        for i in range(width)
        if all(len(s) == width and s[i].isdigit() for s in split)
        and len({s[i] for s in split}) == len(keys)
        and all(s[:i] + s[i + 1 :] == split[0][:i] + split[0][i + 1 :] for s in split)
    ]
    if not numeric:
        raise UnsupportedArchitectureError(f"cannot find the expert index in checkpoint key {keys[0]!r}")
    index = numeric[-1]  # one expert: the last component that is 0 (after the layer index)
    escaped = [part.replace("{", "{{").replace("}", "}}") for part in split[0]]
    return ".".join(escaped[:index] + ["{e}"] + escaped[index + 1 :])


def _merges_experts(converter: WeightConverter) -> bool:
    return bool(converter.operations) and isinstance(converter.operations[0], MergeModulelist)


def _fused_deinterleave_dim(converter: WeightConverter) -> int | None:
    """The per-expert dim of an `Interleave` over a fused [E, ...] tensor (its other operations must be ones that
    leave one unquantized tensor as it is: a dequantization given no scales), else refuse."""
    dim = None
    for op in converter.operations:
        if isinstance(op, Interleave) and not op.inverse and op.dim >= 1 and dim is None:
            dim = op.dim - 1
        elif type(op).__name__ not in _IDENTITY_ON_ONE_TENSOR:
            raise UnsupportedArchitectureError(f"fused expert tensor with conversion {converter.operations!r}")
    return dim


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
    missing = sorted(persistent - set(wmap.backbone) - set(wmap.converted))
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
