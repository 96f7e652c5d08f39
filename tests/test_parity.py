"""The first test of Remoe: output identical to transformers, for every architecture and on-disk layout."""

from __future__ import annotations

import pytest
import torch

from remoe.model.engine import LocalEngine
from tests.conftest import ARCHS, LAYOUTS, PROMPT, reference_generate, reference_logits

LOGIT_TOL = 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_and_prefill_logits_match_transformers(arch, layout, tiny_model, reference):
    engine = LocalEngine(tiny_model(arch, layout), device="cpu")
    ref = reference(arch)
    ids = engine.encode(PROMPT)

    torch.testing.assert_close(engine.prefill_logits(ids), reference_logits(ref, ids), rtol=0, atol=LOGIT_TOL)
    result = engine.generate(token_ids=ids, max_new_tokens=32)
    assert result.token_ids == reference_generate(ref, ids, 32)
    assert result.prompt_tokens == len(ids)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_expert_budget_evicts_and_reloads_yet_matches(arch, layout, tiny_model, reference):
    """A budget of two experts forces loads, evictions and reloads inside every forward."""
    path = tiny_model(arch, layout)
    probe = LocalEngine(path, device="cpu")
    budget = 2 * probe.weights.expert_nbytes(probe.backbone.arch.layer_indices[0], 0)
    engine = LocalEngine(path, device="cpu", expert_budget_bytes=budget)
    ids = engine.encode(PROMPT)

    result = engine.generate(token_ids=ids, max_new_tokens=32)

    assert result.token_ids == reference_generate(reference(arch), ids, 32)
    stats = engine.executor.stats
    assert stats.evictions > 0
    distinct = len(engine.executor.hosted)
    assert stats.loads > distinct, "experts should have been loaded again after eviction"
    assert engine.executor.cache.resident_bytes <= budget
