"""`remoe split`: a checkpoint into backbone weights, per-layer expert shards and a manifest.

Layout of the output directory:
  config.json, generation_config.json, tokenizer files   copied unchanged
  backbone.safetensors        everything but routed experts, under the model's parameter names
  experts/layer_NNN.safetensors   one file per MoE layer; key "layers.L.experts.E.PARAM" = one expert's
                                  tensor in the experts module's layout, readable alone (with
                                  --expert-dtype int8/int4 its quantized parts: remoe/checkpoint/quantized.py)
  manifest.json               sizes the scheduler's cost model reads (exact tensor-data bytes)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from remoe.checkpoint.architecture import kv_cache_bytes_per_token
from remoe.checkpoint.manifest import MANIFEST_FILE, LayerExperts, Manifest
from remoe.checkpoint.quantized import (
    DEFAULT_GROUP_SIZE,
    EXPERT_DTYPES,
    INT4,
    ExpertFormat,
    convert,
    int4_group,
    stored_tensors,
)
from remoe.checkpoint.weights import ModelWeights, open_weights, split_expert_key
from remoe.errors import CheckpointError
from remoe.experts.recorded_math import record_experts_math

BACKBONE_FILE = "backbone.safetensors"
_COPIED = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors writes 0600; expert hosts may run as another user


def layer_file(layer: int) -> str:
    return f"experts/layer_{layer:03d}.safetensors"


def split_checkpoint(
    src: str | Path,
    out: str | Path,
    progress: bool = True,
    expert_dtype: str = "same",
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Manifest:
    """Write the split into `out` (created; must not exist or be empty). Written to a side directory first
    and renamed at the end, so an interrupted split never leaves a half-written `out` behind.

    `expert_dtype` stores the routed experts as the checkpoint has them ("same", exact) or as bf16, int8 or int4
    (weight-only, `group_size` input columns per int4 scale); the backbone is always copied unchanged."""
    src, out = Path(src), Path(out)
    if expert_dtype not in EXPERT_DTYPES:
        raise CheckpointError(f"--expert-dtype must be one of {', '.join(EXPERT_DTYPES)}; got {expert_dtype!r}")
    if (src / MANIFEST_FILE).is_file():
        raise CheckpointError(f"{src}: already a split directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: output exists and is not an empty directory")
    weights = open_weights(src)
    fmt = _expert_format(weights, expert_dtype, group_size)
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "experts").mkdir(parents=True)
    try:
        manifest = _write_split(weights, src, work, progress, fmt)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    work.rename(out)
    return manifest


def _expert_format(weights: ModelWeights, expert_dtype: str, group_size: int) -> ExpertFormat | None:
    """The format asked for, checked against every MoE layer's shapes before anything is written; None where
    the experts stay as they are (also bf16 of a bf16 checkpoint)."""
    arch = weights.arch
    first = arch.moe_layers[0].layer if arch.moe_layers else None
    stored = weights.read_expert(first, 0) if first is not None else {}
    source = str(next(iter(stored.values())).dtype).removeprefix("torch.") if stored else "float32"
    target = EXPERT_DTYPES[expert_dtype]
    if target is None or target == source:
        return None
    fmt = ExpertFormat(target, source, group_size if target == INT4 else None)
    if fmt.quantized:
        for moe in arch.moe_layers:
            for param, shape in moe.param_shapes.items():
                if len(shape) != 2:
                    raise CheckpointError(
                        f"--expert-dtype {expert_dtype}: layer {moe.layer}'s {param} has shape {list(shape)}; only "
                        "expert matrices quantize (choose bf16 or same)"
                    )
                if target == INT4:
                    int4_group(shape[1], group_size)
    return fmt


def _write_split(weights: ModelWeights, src: Path, out: Path, progress: bool, fmt: ExpertFormat | None) -> Manifest:
    for name in _COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    if weights.shipped is not None:  # the split stores the dequantized tensors: its config declares none
        config = json.loads((src / "config.json").read_text())
        config.pop("quantization_config", None)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    arch = weights.arch
    steps = 1 + len(arch.moe_layers)
    with tqdm(total=steps, desc="split", unit="file", disable=not progress) as bar:
        backbone = {name: t.contiguous() for name, t in weights.backbone_tensors()}
        _save(backbone, out / BACKBONE_FILE)
        backbone_bytes = sum(t.nbytes for t in backbone.values())
        del backbone
        bar.update()
        layers, dtype = [], None
        for moe in arch.moe_layers:
            tensors: dict[str, torch.Tensor] = {}
            expert_bytes = []
            for e in range(moe.num_experts):
                stored: dict[str, torch.Tensor] = {}
                for param, t in weights.read_expert(moe.layer, e).items():
                    dtype = t.dtype
                    stored.update(stored_tensors(split_expert_key(moe.layer, e, param), convert(t, fmt) if fmt else t))
                expert_bytes.append(sum(t.nbytes for t in stored.values()))
                tensors.update(stored)
            _save(tensors, out / layer_file(moe.layer))
            layers.append(LayerExperts(moe.layer, layer_file(moe.layer), expert_bytes))
            bar.update()

    experts_math, _ = record_experts_math(arch)  # lets a function serve the split without transformers
    manifest = Manifest(
        architecture=type(arch.skeleton).__name__,
        model_type=arch.model_type,
        num_hidden_layers=int(weights.config.num_hidden_layers),
        num_experts=arch.num_experts,
        top_k=arch.top_k,
        hidden_size=arch.hidden_size,
        dtype=str(dtype).removeprefix("torch."),
        backbone_file=BACKBONE_FILE,
        backbone_bytes=backbone_bytes,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(weights.config, dtype),
        layers=layers,
        experts_math=experts_math,
        expert_format=fmt,
        shipped_quantization=weights.shipped.label() if weights.shipped is not None else None,
    )
    manifest.save(out)
    return manifest


def describe(weights: ModelWeights) -> str:
    arch = weights.arch
    expert_bytes = sum(weights.expert_nbytes(m.layer, e) for m in arch.moe_layers for e in range(m.num_experts))
    fmt = weights.expert_format
    stored = f" stored {fmt.label()}" if fmt is not None else ""
    if weights.shipped_label:
        stored += f"; checkpoint shipped {weights.shipped_label}"
    return (
        f"{type(arch.skeleton).__name__}: {len(arch.moe_layers)} MoE layers x {arch.num_experts} experts, "
        f"top-{arch.top_k}, hidden {arch.hidden_size}; backbone {weights.backbone_nbytes() / 2**20:.1f} MiB, "
        f"routed experts {expert_bytes / 2**20:.1f} MiB{stored}"
    )
