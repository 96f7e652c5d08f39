"""Activation records: exactly the routing transformers' own routers produce, split into prefill and decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remoe.model.activations import ActivationRecord
from remoe.model.engine import LocalEngine
from tests.conftest import PROMPT


def _reference_routing_counts(model, arch, token_ids, new_tokens):
    """Count top_k_index per (layer, expert) seen by the reference's experts modules during its generate."""
    rows = {layer: i for i, layer in enumerate(arch.layer_indices)}
    counts = {"prefill": np.zeros((len(rows), arch.num_experts), np.int64)}
    counts["decode"] = np.zeros_like(counts["prefill"])
    phase = {"now": "prefill"}
    hooks = []
    for moe in arch.moe_layers:

        def hook(module, args, _output, row=rows[moe.layer]):
            counts[phase["now"]][row] += np.bincount(args[1].flatten().numpy(), minlength=arch.num_experts)

        hooks.append(model.get_submodule(moe.path).register_forward_hook(hook))

    class PhaseSwitch:  # generate() puts the prompt, then each new token, into its streamer
        def put(self, value):
            if value.numel() == 1:
                phase["now"] = "decode"

        def end(self):
            pass

    try:
        with torch.inference_mode():
            model.generate(
                torch.tensor([token_ids]), max_new_tokens=new_tokens, do_sample=False, streamer=PhaseSwitch()
            )
    finally:
        for h in hooks:
            h.remove()
    return counts


@pytest.mark.parametrize("arch_name", ["mixtral", "deepseek_v2", "gpt_oss"])
def test_record_equals_the_routing_of_transformers_generate(arch_name, tiny_model, reference):
    engine = LocalEngine(tiny_model(arch_name), device="cpu")
    arch = engine.backbone.arch
    ids = engine.encode(PROMPT)
    result = engine.generate(token_ids=ids, max_new_tokens=10)
    record = result.activations

    expected = _reference_routing_counts(reference(arch_name), arch, ids, 10)
    np.testing.assert_array_equal(record.prefill, expected["prefill"])
    np.testing.assert_array_equal(record.decode, expected["decode"])
    assert record.moe_layers == arch.layer_indices
    assert (record.n_in, record.n_out) == (len(ids), len(result.token_ids))
    # Every token goes to top_k experts in each MoE layer; the last sampled token is never run.
    assert (record.prefill.sum(axis=1) == len(ids) * arch.top_k).all()
    assert (record.decode.sum(axis=1) == (len(result.token_ids) - 1) * arch.top_k).all()
    np.testing.assert_allclose(record.prefill_frequency().sum(axis=1), 1.0)


def test_record_round_trips_through_a_dict():
    record = ActivationRecord([1, 2], num_experts=3, top_k=2, n_in=2, n_out=1)
    record.prefill[0] = [2, 1, 1]
    again = ActivationRecord.from_dict(record.to_dict())
    np.testing.assert_array_equal(again.prefill, record.prefill)
    assert again.to_dict() == record.to_dict()
