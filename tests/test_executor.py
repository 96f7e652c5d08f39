"""LocalExpertExecutor: lazy loading of what is routed, hosting subsets, the architecture's own math."""

from __future__ import annotations

import pytest
import torch

from remoe.checkpoint.weights import open_weights
from remoe.experts.executor import ExpertNotHostedError, LocalExpertExecutor
from tests.conftest import ARCHS


def _routing(arch, tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, arch.hidden_size, generator=g)  # [T, H]
    index = torch.stack([torch.randperm(arch.num_experts, generator=g)[: arch.top_k] for _ in range(tokens)])  # [T, K]
    weights = torch.rand(tokens, arch.top_k, generator=g)  # [T, K]
    return hidden, index, weights


@pytest.mark.parametrize("arch_name", ARCHS)
def test_matches_the_full_experts_module_of_transformers(arch_name, reference, tiny_model):
    """Per-expert modules over hosted slices give what the full experts module gives, for every arch."""
    weights = open_weights(tiny_model(arch_name, "fused"))
    arch = weights.arch
    layer = arch.layer_indices[-1]
    hidden, index, routing = _routing(arch)
    full = reference(arch_name).get_submodule(arch.moe_layer(layer).path)
    with torch.inference_mode():
        expected = full(hidden, index, routing)  # [T, H]
    got = LocalExpertExecutor(weights).compute(layer, hidden, index, routing)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_loads_only_the_experts_that_tokens_are_routed_to(tiny_model):
    weights = open_weights(tiny_model("olmoe"))
    executor = LocalExpertExecutor(weights)
    hidden = torch.randn(3, weights.arch.hidden_size)
    index = torch.tensor([[1, 4, 6], [4, 6, 1], [6, 1, 4]])
    executor.compute(0, hidden, index, torch.ones(3, 3))
    assert sorted(executor.cache.resident()) == [(0, 1), (0, 4), (0, 6)]
    assert executor.stats.loads == 3
    assert executor.stats.bytes_loaded == sum(weights.expert_nbytes(0, e) for e in (1, 4, 6))
    executor.compute(0, hidden, index, torch.ones(3, 3))
    assert executor.stats.loads == 3 and executor.stats.hits == 3


def test_an_executor_hosting_a_subset_refuses_other_experts(tiny_model):
    weights = open_weights(tiny_model("mixtral"))
    executor = LocalExpertExecutor(weights, hosted=[(0, 0), (0, 1)])
    hidden = torch.randn(1, weights.arch.hidden_size)
    executor.compute(0, hidden, torch.tensor([[0, 1]]), torch.ones(1, 2))
    with pytest.raises(ExpertNotHostedError, match="layer 0 expert 2"):
        executor.compute(0, hidden, torch.tensor([[0, 2]]), torch.ones(1, 2))


def test_partial_sums_over_disjoint_hosts_add_up_to_the_whole(tiny_model):
    """Two executors with disjoint expert sets, each given only its tokens' slots, sum to one executor's result."""
    weights = open_weights(tiny_model("qwen2_moe"))
    arch = weights.arch
    hidden, index, routing = _routing(arch, tokens=5, seed=3)
    whole = LocalExpertExecutor(weights).compute(0, hidden, index, routing)
    low = [(0, e) for e in range(arch.num_experts // 2)]
    high = [(0, e) for e in range(arch.num_experts // 2, arch.num_experts)]
    parts = torch.zeros_like(whole)
    for hosted in (low, high):
        mine = torch.isin(index, torch.tensor([e for _, e in hosted]))
        rows = mine.any(dim=1).nonzero().flatten()
        # Slots this host does not serve keep a hosted id with zero weight.
        sub_index = torch.where(mine, index, hosted[0][1])[rows]
        sub_weights = torch.where(mine, routing, torch.zeros_like(routing))[rows]
        parts.index_add_(
            0, rows, LocalExpertExecutor(weights, hosted=hosted).compute(0, hidden[rows], sub_index, sub_weights)
        )
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)
