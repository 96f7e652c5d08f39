"""Check that Remoe reproduces transformers on a checkpoint: same greedy tokens, logits within tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from remoe.model.engine import LocalEngine


@dataclass(slots=True)
class VerifyReport:
    max_logit_diff: float
    tokens_equal: bool
    remoe_tokens: list[int]
    reference_tokens: list[int]
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.tokens_equal and self.max_logit_diff <= self.tolerance


def verify(
    checkpoint: str | Path,
    remoe_model: str | Path | None = None,
    prompt: str = "The quick brown fox",
    max_new_tokens: int = 32,
    tolerance: float = 1e-4,
    expert_budget_bytes: int | None = None,
) -> VerifyReport:
    """Compare `AutoModelForCausalLM.from_pretrained(checkpoint)` with LocalEngine over `remoe_model`
    (default: the same checkpoint; pass a split directory to check a split), in float32 on the CPU."""
    engine = LocalEngine(
        remoe_model or checkpoint, device="cpu", dtype=torch.float32, expert_budget_bytes=expert_budget_bytes
    )
    reference = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    ids = engine.encode(prompt)
    with torch.inference_mode():
        ref_logits = reference(torch.tensor([ids])).logits[0].float()
        ref_out = reference.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    ref_tokens = ref_out[0, len(ids) :].tolist()
    ours = engine.generate(token_ids=ids, max_new_tokens=max_new_tokens).token_ids
    diff = float((engine.prefill_logits(ids) - ref_logits).abs().max())
    return VerifyReport(diff, ours == ref_tokens, ours, ref_tokens, tolerance)
