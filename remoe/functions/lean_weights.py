"""A function's experts opened without transformers: the experts' math and shapes, and where each expert's
tensors lie, come from a record instead of the meta skeleton (remoe/checkpoint/architecture.py).

Two records serve: the experts record the backbone writes for its local functions (any checkpoint whose experts
are gated SiLU; remoe/functions/experts_record.py), and the manifest of a `remoe split` directory (the record
`remoe split` writes). Only what a function reads is here: the MoE layers, each expert's tensors and bytes, the
checkpoint's dtype. `open_lean()` returns None with the reason when neither record serves (a split made before
the record, experts outside the gated-SiLU family, a checkpoint changed since): the function then opens its
weights the usual way, transformers and all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from remoe.checkpoint.dtypes import SAFETENSORS_DTYPES
from remoe.checkpoint.expert_sources import ExpertSource, split_expert_source
from remoe.checkpoint.files import Checkpoint
from remoe.checkpoint.manifest import MANIFEST_FILE, ExpertsMath, Manifest
from remoe.checkpoint.moe_layers import MoELayerLookup
from remoe.checkpoint.quantized import ExpertFormat, QuantizedWeight, read_stored
from remoe.errors import CheckpointError
from remoe.functions.experts_record import ExpertsRecord


@dataclass(frozen=True, slots=True)
class LeanMoELayer:
    layer: int
    num_experts: int
    param_shapes: dict[str, tuple[int, ...]]


@dataclass
class LeanArchitecture(MoELayerLookup):
    """The part of Architecture a function uses, from a record."""

    experts_math: ExpertsMath  # the executor builds the layer kernels from this (no experts class)
    moe_layers: list[LeanMoELayer]
    hidden_size: int
    top_k: int


@dataclass
class LeanWeights:
    path: Path
    config: SimpleNamespace  # only `dtype`, as config.json stores it (resolve_dtype reads it)
    arch: LeanArchitecture
    ckpt: Checkpoint
    sources: dict[tuple[int, str], ExpertSource]  # (layer, param) -> where every expert's tensor lies
    expert_format: ExpertFormat | None = None  # a split's reduced expert format (its manifest's)
    manifest_bytes: dict[int, list[int]] | None = None  # a split's exact bytes per layer and expert

    def read_expert(self, layer: int, expert: int) -> dict[str, torch.Tensor | QuantizedWeight]:
        params = self.arch.moe_layer(layer).param_shapes
        if self.expert_format is None:
            return {p: self.sources[(layer, p)].read(self.ckpt, expert) for p in params}
        # only a split has a format, and a split's source is one key per expert and param
        return {
            p: read_stored(self.ckpt.read_owned, self.sources[(layer, p)].keys(expert)[0], self.expert_format)
            for p in params
        }

    def expert_nbytes(self, layer: int, expert: int) -> int:
        if self.expert_format is not None:
            return self.manifest_bytes[layer][expert]
        return sum(self.sources[(layer, p)].nbytes(self.ckpt, expert) for p in self.arch.moe_layer(layer).param_shapes)

    def expert_key(self, layer: int, expert: int) -> str:
        return self.sources[(layer, next(iter(self.arch.moe_layer(layer).param_shapes)))].keys(expert)[0]

    def expert_nbytes_as(self, layer: int, expert: int, dtype: torch.dtype) -> int:
        if self.expert_format is not None:  # held as stored
            return self.expert_nbytes(layer, expert)
        stored = SAFETENSORS_DTYPES.get(self.ckpt.info(self.expert_key(layer, expert)).dtype, dtype)
        return self.expert_nbytes(layer, expert) * dtype.itemsize // stored.itemsize


def _config(path: Path) -> SimpleNamespace:
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: cannot read ({e})") from e
    return SimpleNamespace(dtype=raw.get("dtype") or raw.get("torch_dtype"))


def _from_record(path: Path, record_path: Path) -> tuple[LeanWeights | None, str]:
    try:
        record = ExpertsRecord.load(record_path)
    except CheckpointError as e:
        return None, str(e)
    if Path(record.model_dir) != path.resolve():
        return None, f"{record_path} is the experts record of {record.model_dir}, not of {path}"
    stale = record.stale()
    if stale:
        return None, stale
    shapes = {n: tuple(s) for n, s in record.experts_math.param_shapes.items()}
    layers = [LeanMoELayer(entry.layer, record.num_experts, shapes) for entry in record.layers]
    arch = LeanArchitecture(record.experts_math, layers, record.hidden_size, record.top_k)
    ckpt = Checkpoint.from_files(path, None, [path / name for name in record.files])
    return LeanWeights(path, _config(path), arch, ckpt, record.sources()), f"experts record {record_path}"


def _from_split(path: Path) -> tuple[LeanWeights | None, str]:
    if not (path / MANIFEST_FILE).is_file():
        return None, f"{path} is an original checkpoint, not a `remoe split` directory"
    manifest = Manifest.load(path)
    if manifest.experts_math is None:
        return None, f"{path / MANIFEST_FILE} records no experts math (split before it, or experts need their class)"
    shapes = {n: tuple(s) for n, s in manifest.experts_math.param_shapes.items()}
    layers = [LeanMoELayer(entry.layer, manifest.num_experts, shapes) for entry in manifest.layers]
    arch = LeanArchitecture(manifest.experts_math, layers, manifest.hidden_size, manifest.top_k)
    files = [path / entry.file for entry in manifest.layers]  # the backbone's file is not a function's business
    ckpt = Checkpoint.from_files(path, None, files)
    sources = {(m.layer, p): split_expert_source(m.layer, p) for m in layers for p in shapes}
    exact = {entry.layer: entry.expert_bytes for entry in manifest.layers}
    lean = LeanWeights(path, _config(path), arch, ckpt, sources, manifest.expert_format, exact)
    return lean, "split with a recorded experts math"


def open_lean(path: str | Path, record: str | Path | None = None) -> tuple[LeanWeights | None, str]:
    """The weights at `path` opened without transformers (through the experts `record` where one is given and
    holds, else a split's manifest), or None and why not."""
    path = Path(path)
    reasons = []
    if record:
        weights, why = _from_record(path, Path(record))
        if weights is not None:
            return weights, why
        reasons.append(why)
    weights, why = _from_split(path)
    return weights, "; ".join([*reasons, why])
