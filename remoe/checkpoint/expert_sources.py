"""Where one routed expert's tensor lies in a checkpoint's safetensors files, in the two layouts transformers
writes: all experts fused in one [E, ...] tensor, or one tensor per expert (and part).

torch and safetensors only: a lean function reads its experts through these without importing transformers
(remoe/functions/experts_record.py stores them as JSON; remoe/checkpoint/weight_map.py finds them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from remoe.checkpoint.files import Checkpoint
from remoe.checkpoint.manifest import split_expert_key
from remoe.errors import CheckpointError


@dataclass(frozen=True, slots=True)
class FusedSource:
    """All experts in one [E, ...] tensor; expert e is row e."""

    key: str
    # transformers' Interleave on load (inkling2's w13 stores gate and up rows interleaved): the per-expert dim
    deinterleave_dim: int | None = None

    def read(self, ckpt: Checkpoint, expert: int) -> torch.Tensor:
        row = ckpt.read_row_owned(self.key, expert)  # its own memory: a mapped page would be held twice
        return row if self.deinterleave_dim is None else deinterleave(row, self.deinterleave_dim)

    def keys(self, expert: int) -> list[str]:
        return [self.key]

    def nbytes(self, ckpt: Checkpoint, expert: int) -> int:
        info = ckpt.info(self.key)
        return info.nbytes // info.shape[0]

    def to_json(self) -> dict:
        return {"key": self.key, "deinterleave_dim": self.deinterleave_dim}


def deinterleave(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """transformers' `Interleave(dim)`: rows (0, 2, 4, ...) then (1, 3, 5, ...) along `dim`; [.., 2I, ..] kept."""
    shape = list(tensor.shape)
    shape[dim : dim + 1] = [shape[dim] // 2, 2]
    return tensor.reshape(shape).transpose(dim, dim + 1).reshape(tensor.shape).contiguous()


@dataclass(frozen=True, slots=True)
class PerExpertSource:
    """One tensor per expert and part; `templates` hold `{e}` where the expert index goes."""

    templates: tuple[str, ...]
    concat_dim: int | None  # per-expert dim along which the parts are concatenated (gate rows, then up)

    def keys(self, expert: int) -> list[str]:
        return [t.format(e=expert) for t in self.templates]

    def nbytes(self, ckpt: Checkpoint, expert: int) -> int:
        return sum(ckpt.info(k).nbytes for k in self.keys(expert))

    def read(self, ckpt: Checkpoint, expert: int) -> torch.Tensor:
        parts = [ckpt.read_owned(k) for k in self.keys(expert)]
        return parts[0] if self.concat_dim is None else torch.cat(parts, dim=self.concat_dim)

    def to_json(self) -> dict:
        return {"templates": list(self.templates), "concat_dim": self.concat_dim}


ExpertSource = FusedSource | PerExpertSource


def split_expert_source(layer: int, param: str) -> PerExpertSource:
    """Every expert's `param` of `layer` in a `remoe split` directory: one tensor per expert."""
    return PerExpertSource((split_expert_key(layer, "{e}", param),), None)  # type: ignore[arg-type]  (the slot)


def source_from_json(raw: dict) -> ExpertSource:
    dim = raw.get("deinterleave_dim")
    if isinstance(raw.get("key"), str) and (dim is None or isinstance(dim, int)):
        return FusedSource(raw["key"], dim)
    templates = raw.get("templates")
    concat_dim = raw.get("concat_dim")
    if (
        isinstance(templates, list)
        and templates
        and all(isinstance(t, str) and "{e}" in t for t in templates)
        and (concat_dim is None or isinstance(concat_dim, int))
    ):
        return PerExpertSource(tuple(templates), concat_dim)
    raise CheckpointError(f"an expert source must be {{'key': ...}} or {{'templates': [...{{e}}...]}}, not {raw!r}")
