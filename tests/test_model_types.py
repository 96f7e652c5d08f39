"""Every MoE model type of the pinned transformers: found by inspecting transformers, each in the committed
support survey, and the loader/cache paths the survey found missing checked token-exact here."""

from __future__ import annotations

import pytest

from remoe.model.model_types import moe_model_types
from remoe.model.type_support import survey_results
from remoe.model.type_survey import EXACT, survey


def test_the_survey_covers_every_moe_model_type_transformers_has():
    """A model type added to transformers (or the survey file gone stale) fails here instead of being skipped."""
    found = {t.model_type for t in moe_model_types()}
    assert {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "gpt_oss"} <= found
    results = survey_results()["results"]
    assert sorted(found - set(results)) == []
    for model_type, result in results.items():
        assert result["status"] == EXACT or result["reason"], f"{model_type}: {result['status']} without a reason"


@pytest.mark.parametrize(
    "model_type",
    [
        "lara_mini",  # a fused in_proj that transformers splits on load (a backbone WeightConverter)
        "bailing_hybrid",  # separate q/k/v conv1d weights that transformers merges on load
        "minimax",  # a cache of the model's own (MiniMaxCache), which generate does not make
        "deepseek_v4",  # expert keys matched by a regular expression in the conversion mapping
        "qwen3_next",  # gated-delta-net layers: a linear-attention cache beside the KV cache
    ],
)
def test_model_type_is_token_exact_through_checkpoint_budget_and_split(model_type, tmp_path):
    result = survey(model_type, tmp_path)
    assert (result.status, result.reason) == (EXACT, "")
    assert result.checks == ["checkpoint", "one-expert budget", "split"]
