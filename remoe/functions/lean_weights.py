"""A `remoe split` directory opened for a function without transformers: the manifest's record of the experts'
math and shapes stands in for the meta skeleton (remoe/checkpoint/architecture.py).

Only what a function reads is here: the MoE layers, each expert's tensors and bytes, the checkpoint's dtype.
`open_lean()` returns None with the reason when the split has no record (made before it, or experts outside
the gated-SiLU family): the function then opens the split the usual way, transformers and all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from remoe.checkpoint.dtypes import SAFETENSORS_DTYPES
from remoe.checkpoint.files import Checkpoint
from remoe.checkpoint.manifest import MANIFEST_FILE, ExpertsMath, Manifest, split_expert_key
from remoe.checkpoint.moe_layers import MoELayerLookup
from remoe.errors import CheckpointError


@dataclass(frozen=True, slots=True)
class LeanMoELayer:
    layer: int
    num_experts: int
    param_shapes: dict[str, tuple[int, ...]]


@dataclass
class LeanArchitecture(MoELayerLookup):
    """The part of Architecture a function uses, from the manifest."""

    experts_math: ExpertsMath  # the executor builds the layer kernels from this (no experts class)
    moe_layers: list[LeanMoELayer]
    hidden_size: int
    top_k: int


@dataclass
class LeanSplitWeights:
    path: Path
    config: SimpleNamespace  # only `dtype`, as config.json stores it (resolve_dtype reads it)
    arch: LeanArchitecture
    ckpt: Checkpoint
    manifest: Manifest

    def read_expert(self, layer: int, expert: int) -> dict[str, torch.Tensor]:
        return {p: self.ckpt.read(split_expert_key(layer, expert, p)) for p in self.arch.moe_layer(layer).param_shapes}

    def expert_nbytes(self, layer: int, expert: int) -> int:
        return self.manifest.layer(layer).expert_bytes[expert]

    def expert_key(self, layer: int, expert: int) -> str:
        return split_expert_key(layer, expert, next(iter(self.arch.moe_layer(layer).param_shapes)))

    def expert_nbytes_as(self, layer: int, expert: int, dtype: torch.dtype) -> int:
        stored = SAFETENSORS_DTYPES.get(self.ckpt.info(self.expert_key(layer, expert)).dtype, dtype)
        return self.expert_nbytes(layer, expert) * dtype.itemsize // stored.itemsize


def open_lean(path: str | Path) -> tuple[LeanSplitWeights | None, str]:
    """The split at `path` opened without transformers, or None and why not."""
    path = Path(path)
    if not (path / MANIFEST_FILE).is_file():
        return None, f"{path} is an original checkpoint, not a `remoe split` directory"
    manifest = Manifest.load(path)
    if manifest.experts_math is None:
        return None, f"{path / MANIFEST_FILE} records no experts math (split before it, or experts need their class)"
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: cannot read ({e})") from e
    shapes = {n: tuple(s) for n, s in manifest.experts_math.param_shapes.items()}
    layers = [LeanMoELayer(entry.layer, manifest.num_experts, shapes) for entry in manifest.layers]
    arch = LeanArchitecture(manifest.experts_math, layers, manifest.hidden_size, manifest.top_k)
    files = [path / entry.file for entry in manifest.layers]  # the backbone's file is not a function's business
    ckpt = Checkpoint.from_files(path, None, files)
    config = SimpleNamespace(dtype=raw.get("dtype") or raw.get("torch_dtype"))
    return LeanSplitWeights(path, config, arch, ckpt, manifest), "split with a recorded experts math"
