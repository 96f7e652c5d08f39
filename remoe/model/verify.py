"""Check that Remoe reproduces transformers on a checkpoint: same greedy tokens, logits within tolerance."""

from __future__ import annotations

import copy
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
    model_type: str = ""

    @property
    def ok(self) -> bool:
        return self.tokens_equal and self.max_logit_diff <= self.tolerance


def reference_tokens(model_dir: str | Path, ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy `n` tokens after `ids` (EOS ignored, so every token is compared: a check that stops
    at EOS checks little) and its prefill logits [T, V], in float32 on the CPU."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = []  # no EOS at all (None would fall back to the model config's)
    config.update(max_new_tokens=n, do_sample=False)  # (not min_new_tokens: it would mask EOS out of the argmax)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
        out = model.generate(torch.tensor([ids]), generation_config=config)
    tokens = out[0, len(ids) :].tolist()
    if len(tokens) != n:
        raise RuntimeError(f"transformers' generate stopped after {len(tokens)} of {n} tokens")
    return tokens, logits


def verify(
    checkpoint: str | Path,
    remoe_model: str | Path | None = None,
    prompt: str = "The quick brown fox",
    max_new_tokens: int = 32,
    tolerance: float = 1e-4,
    expert_budget_bytes: int | None = None,
) -> VerifyReport:
    """Compare `AutoModelForCausalLM.from_pretrained(checkpoint)` with LocalEngine over `remoe_model`
    (default: the same checkpoint; pass a split directory to check a split), in float32 on the CPU, over
    exactly `max_new_tokens` greedy tokens (EOS does not end either side)."""
    engine = LocalEngine(
        remoe_model or checkpoint, device="cpu", dtype=torch.float32, expert_budget_bytes=expert_budget_bytes
    )
    ids = engine.encode(prompt)
    ref_tokens, ref_logits = reference_tokens(checkpoint, ids, max_new_tokens)
    ours = engine.generate(token_ids=ids, max_new_tokens=max_new_tokens, stop_on_eos=False).token_ids
    diff = float((engine.prefill_logits(ids) - ref_logits).abs().max())
    return VerifyReport(diff, ours == ref_tokens, ours, ref_tokens, tolerance, engine.weights.config.model_type)
