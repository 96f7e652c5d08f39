"""Per-request expert activation: tokens routed to each (MoE layer, expert) during prefill and decode.

The predictor learns from exactly this; s[l, k] = prefill[l, k] / (n_in * top_k) is the paper's frequency.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ActivationRecord:
    moe_layers: list[int]  # decoder layer index of each row
    num_experts: int
    top_k: int
    prefill: np.ndarray = field(default=None)  # [L, E] int64 token counts
    decode: np.ndarray = field(default=None)  # [L, E] int64 token counts
    n_in: int = 0
    n_out: int = 0

    def __post_init__(self) -> None:
        shape = (len(self.moe_layers), self.num_experts)
        if self.prefill is None:
            self.prefill = np.zeros(shape, dtype=np.int64)
        if self.decode is None:
            self.decode = np.zeros(shape, dtype=np.int64)

    def prefill_frequency(self) -> np.ndarray:
        """s[l, k] = tokens(l, k) / (n_in * top_k): each row sums to 1 when n_in > 0."""
        return self.prefill / max(1, self.n_in * self.top_k)

    def to_dict(self) -> dict:
        return {
            "moe_layers": self.moe_layers,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "prefill": self.prefill.tolist(),
            "decode": self.decode.tolist(),
            "n_in": self.n_in,
            "n_out": self.n_out,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ActivationRecord:
        return cls(
            moe_layers=list(raw["moe_layers"]),
            num_experts=int(raw["num_experts"]),
            top_k=int(raw["top_k"]),
            prefill=np.asarray(raw["prefill"], dtype=np.int64),
            decode=np.asarray(raw["decode"], dtype=np.int64),
            n_in=int(raw["n_in"]),
            n_out=int(raw["n_out"]),
        )


class ActivationRecorder:
    """Counts routed tokens into a record; `phase` says whether the current forward is prefill or decode."""

    def __init__(self, moe_layers: list[int], num_experts: int, top_k: int) -> None:
        self.record = ActivationRecord(moe_layers, num_experts, top_k)
        self._row = {layer: i for i, layer in enumerate(moe_layers)}
        self.phase = "prefill"

    def start_decode(self) -> None:
        self.phase = "decode"

    def observe(self, layer: int, top_k_index: torch.Tensor) -> None:
        counts = torch.bincount(top_k_index.flatten().cpu(), minlength=self.record.num_experts)  # [E]
        self.add(layer, counts[: self.record.num_experts].numpy())

    def add(self, layer: int, counts: np.ndarray) -> None:
        """Add tokens per expert [E] of `layer` to the current phase."""
        target = self.record.prefill if self.phase == "prefill" else self.record.decode
        target[self._row[layer]] += counts


def observe_rows(layer: int, top_k_index: torch.Tensor, sizes: list[int], recorders: list) -> None:
    """A batched forward's routing [T, K], rows grouped by request (sizes[i] rows of recorders[i], None: not
    recording): every request's counts from one bincount instead of one per request."""
    live = [r for r in recorders if r is not None]
    if not live:
        return
    experts = live[0].record.num_experts
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # [T]
    keys = group[:, None] * experts + top_k_index.cpu()  # [T, K]
    counts = torch.bincount(keys.flatten(), minlength=len(sizes) * experts).view(len(sizes), experts).numpy()
    for recorder, row in zip(recorders, counts, strict=True):
        if recorder is not None:
            recorder.add(layer, row)


# The recorder of the request running in this context (thread / task); None = not recording.
current_recorder: ContextVar[ActivationRecorder | None] = ContextVar("remoe_activation_recorder", default=None)
