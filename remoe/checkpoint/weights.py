"""Where a model's weights come from: an original Hugging Face checkpoint or a `remoe split` directory.

Both give the same two things: backbone tensors under the model's own parameter names, and one expert's
tensors (in the experts module's in-memory layout, without the E dim) read on demand.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig

from remoe.checkpoint.architecture import Architecture
from remoe.checkpoint.dtypes import SAFETENSORS_DTYPES
from remoe.checkpoint.expert_sources import ExpertSource, split_expert_source
from remoe.checkpoint.files import Checkpoint, load_config
from remoe.checkpoint.manifest import MANIFEST_FILE, Manifest, split_expert_key
from remoe.checkpoint.quantized import ExpertFormat, QuantizedWeight, read_stored
from remoe.checkpoint.shipped_quantization import ShippedQuantization, open_dequantizing
from remoe.checkpoint.weight_map import WeightMap, build_weight_map

__all__ = ["ModelWeights", "CheckpointWeights", "SplitWeights", "open_weights", "split_expert_key"]


class ModelWeights(ABC):
    """Common interface; see CheckpointWeights and SplitWeights."""

    path: Path
    config: PretrainedConfig
    arch: Architecture  # float32 meta skeleton, for names and shapes only
    ckpt: Checkpoint
    expert_format: ExpertFormat | None = None  # a split's reduced expert format; None: as the checkpoint has them
    shipped: ShippedQuantization | None = None  # an original checkpoint's own quantization, read dequantized

    @property
    def shipped_label(self) -> str | None:
        """The original checkpoint's own quantization where it shipped quantized (read, or split, dequantized)."""
        return self.shipped.label() if self.shipped is not None else None

    @abstractmethod
    def backbone_names(self) -> list[str]: ...

    @abstractmethod
    def backbone_key(self, name: str) -> str:
        """Checkpoint key holding the model parameter/buffer `name`."""

    def read_backbone(self, name: str) -> torch.Tensor:
        return self.ckpt.read(self.backbone_key(name))

    def backbone_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.backbone_names():
            yield name, self.read_backbone(name)

    def backbone_nbytes(self) -> int:
        return sum(self.ckpt.info(self.backbone_key(n)).nbytes for n in self.backbone_names())

    @abstractmethod
    def read_expert(self, layer: int, expert: int) -> dict[str, torch.Tensor | QuantizedWeight]:
        """One expert's tensors by experts-module parameter name, per-expert shape (no E dim); a quantized split
        gives its matrices as QuantizedWeight."""

    @abstractmethod
    def expert_nbytes(self, layer: int, expert: int) -> int:
        """Exact bytes of one expert's tensors as stored."""

    @abstractmethod
    def expert_key(self, layer: int, expert: int) -> str:
        """A checkpoint key holding (part of) this expert, e.g. to learn its stored dtype."""

    @abstractmethod
    def expert_source(self, layer: int, param: str) -> ExpertSource:
        """Where every expert's `param` of this layer lies on disk (a lean function reads it through this)."""

    def expert_nbytes_as(self, layer: int, expert: int, dtype: torch.dtype) -> int:
        """Bytes of one expert once loaded in `dtype` (a reduced format is held as stored)."""
        if self.expert_format is not None:
            return self.expert_nbytes(layer, expert)
        stored = SAFETENSORS_DTYPES.get(self.ckpt.info(self.expert_key(layer, expert)).dtype, dtype)
        return self.expert_nbytes(layer, expert) * dtype.itemsize // stored.itemsize


@dataclass
class CheckpointWeights(ModelWeights):
    path: Path
    config: PretrainedConfig
    arch: Architecture
    ckpt: Checkpoint
    wmap: WeightMap
    shipped: ShippedQuantization | None = None

    @classmethod
    def open(cls, path: str | Path) -> CheckpointWeights:
        ckpt, shipped = open_dequantizing(Checkpoint.open(path))
        arch = Architecture.from_config(ckpt.config)
        return cls(Path(path), ckpt.config, arch, ckpt, build_weight_map(ckpt, arch), shipped)

    def backbone_names(self) -> list[str]:
        return list(self.wmap.backbone) + list(self.wmap.converted)

    def backbone_key(self, name: str) -> str:
        if name in self.wmap.converted:
            return self.wmap.converted[name].keys()[0]
        return self.wmap.backbone[name]

    def read_backbone(self, name: str) -> torch.Tensor:
        conversion = self.wmap.converted.get(name)
        if conversion is None:
            return self.ckpt.read(self.backbone_key(name))
        return conversion.read(self.ckpt, self.arch.skeleton)[name]

    def backbone_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.wmap.backbone:
            yield name, self.read_backbone(name)
        for conversion in self.wmap.conversions():  # each conversion once, for all its targets
            yield from conversion.read(self.ckpt, self.arch.skeleton).items()

    def backbone_nbytes(self) -> int:
        plain = sum(self.ckpt.info(key).nbytes for key in self.wmap.backbone.values())
        return plain + sum(self.ckpt.info(k).nbytes for c in self.wmap.conversions() for k in c.keys())

    def read_expert(self, layer: int, expert: int) -> dict[str, torch.Tensor]:
        moe = self.arch.moe_layer(layer)
        return {p: self.wmap.experts[(layer, p)].read(self.ckpt, expert) for p in moe.param_shapes}

    def expert_nbytes(self, layer: int, expert: int) -> int:
        moe = self.arch.moe_layer(layer)
        return sum(self.wmap.experts[(layer, p)].nbytes(self.ckpt, expert) for p in moe.param_shapes)

    def expert_key(self, layer: int, expert: int) -> str:
        param = next(iter(self.arch.moe_layer(layer).param_shapes))
        return self.wmap.experts[(layer, param)].keys(expert)[0]

    def expert_source(self, layer: int, param: str) -> ExpertSource:
        return self.wmap.experts[(layer, param)]


@dataclass
class SplitWeights(ModelWeights):
    path: Path
    config: PretrainedConfig
    arch: Architecture
    ckpt: Checkpoint
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path) -> SplitWeights:
        path = Path(path)
        manifest = Manifest.load(path)
        config = load_config(path)
        files = [path / manifest.backbone_file] + [path / entry.file for entry in manifest.layers]
        ckpt = Checkpoint.from_files(path, config, files)
        return cls(path, config, Architecture.from_config(config), ckpt, manifest)

    def backbone_names(self) -> list[str]:
        backbone = self.path / self.manifest.backbone_file
        return [k for k, info in self.ckpt.tensors.items() if info.file == backbone]

    def backbone_key(self, name: str) -> str:
        return name

    @property
    def expert_format(self) -> ExpertFormat | None:  # type: ignore[override]  (the manifest's)
        return self.manifest.expert_format

    @property
    def shipped_label(self) -> str | None:
        return self.manifest.shipped_quantization

    def read_expert(self, layer: int, expert: int) -> dict[str, torch.Tensor | QuantizedWeight]:
        moe = self.arch.moe_layer(layer)
        fmt = self.manifest.expert_format
        return {p: read_stored(self.ckpt.read_owned, split_expert_key(layer, expert, p), fmt) for p in moe.param_shapes}

    def expert_nbytes(self, layer: int, expert: int) -> int:
        return self.manifest.layer(layer).expert_bytes[expert]

    def expert_key(self, layer: int, expert: int) -> str:
        key = split_expert_key(layer, expert, next(iter(self.arch.moe_layer(layer).param_shapes)))
        return f"{key}.qweight" if self.expert_format is not None and self.expert_format.quantized else key

    def expert_source(self, layer: int, param: str) -> ExpertSource:
        return split_expert_source(layer, param)


def open_weights(path: str | Path) -> ModelWeights:
    """Open a split directory (has manifest.json) or an original Hugging Face checkpoint."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return SplitWeights.open(path)
    return CheckpointWeights.open(path)
