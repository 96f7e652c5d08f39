"""Every MoE model type of the pinned transformers: found by inspecting transformers, each in the committed
support survey, and the loader/cache paths the survey found missing checked token-exact here."""

from __future__ import annotations

import pytest

from remoe.model.model_types import moe_model_types
from remoe.model.type_support import survey_results
from remoe.survey.serving_checks import CLUSTER_TYPES
from remoe.survey.type_survey import EXACT, survey

LOCAL_CHECKS = ["checkpoint", "one-expert budget", "split"]


def test_the_survey_covers_every_moe_model_type_transformers_has():
    """A model type added to transformers (or the survey file gone stale) fails here instead of being skipped."""
    found = {t.model_type for t in moe_model_types()}
    assert {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "gpt_oss"} <= found
    results = survey_results()["results"]
    assert sorted(found - set(results)) == []
    for model_type, result in results.items():
        assert result["status"] == EXACT or result["reason"], f"{model_type}: {result['status']} without a reason"
        if result["status"] == EXACT:  # batched whenever its cache allows, else the reason it is served alone
            assert ("batched" in result["checks"]) != bool(result["unbatched"]), model_type
    for model_type in CLUSTER_TYPES:  # the representative subset went through `remoe up`
        assert results[model_type]["checks"][-1] == "remoe up", model_type


@pytest.mark.parametrize(
    "model_type",
    [
        "lara_mini",  # a fused in_proj that transformers splits on load (a backbone WeightConverter)
        "bailing_hybrid",  # separate q/k/v conv1d weights that transformers merges on load
        "minimax",  # a cache of the model's own (MiniMaxCache), which generate does not make
        "deepseek_v4",  # expert keys matched by a regular expression in the conversion mapping
        "qwen3_next",  # gated-delta-net layers: a linear-attention cache beside the KV cache
        "inkling2_text",  # fused experts stored interleaved (Interleave on load), experts whose act takes (gate, up)
        "dots3_note_text",  # per-layer configs: sliding MLA layers of their own sizes beside indexed ones
    ],
)
def test_model_type_is_token_exact_through_checkpoint_budget_split_and_batching(model_type, tmp_path):
    result = survey(model_type, tmp_path)
    assert (result.status, result.reason) == (EXACT, "")
    assert result.checks == LOCAL_CHECKS + ([] if result.unbatched else ["batched"])


@pytest.mark.processes
def test_a_model_with_a_cache_of_its_own_is_token_exact_through_remoe_up(tmp_path):
    """MiniMax's own cache class on the backbone service, its experts on two expert services and in functions:
    one request, then two at once (served one at a time, for the reason the survey records)."""
    result = survey("minimax", tmp_path, cluster=True)
    assert (result.status, result.reason) == (EXACT, "")
    assert result.checks == [*LOCAL_CHECKS, "remoe up"]
    assert "cache of its own" in result.unbatched


def test_an_interleaved_fused_expert_reads_as_transformers_converts_it_and_survives_its_json(tmp_path):
    """Inkling2 stores gate and up rows interleaved in one [E, 2I, H] tensor; transformers' `Interleave(dim=1)`
    separates them on load. One expert read alone (and its source written to JSON for a lean function, read
    back) equals that expert of the converted tensor."""
    import torch
    from safetensors.torch import save_file
    from transformers.core_model_loading import Interleave

    from remoe.checkpoint.expert_sources import FusedSource, source_from_json
    from remoe.checkpoint.files import Checkpoint

    fused = torch.randn(4, 6, 5)  # [E, 2I, H]
    save_file({"w13_weight": fused}, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint.from_files(tmp_path, None, [tmp_path / "model.safetensors"])
    converted = Interleave(dim=1).convert({"w13_weight": fused}, ["w13_weight"], ["gate_up_proj"])["gate_up_proj"]
    source = FusedSource("w13_weight", deinterleave_dim=0)
    assert not torch.equal(converted, fused)
    for expert in range(4):
        assert torch.equal(source.read(ckpt, expert), converted[expert])
    assert source_from_json(source.to_json()) == source
    assert source_from_json({"key": "w13_weight"}) == FusedSource("w13_weight")  # records written before it


def test_the_readme_lists_what_the_survey_found():
    """README's model-type paragraph is the survey's own summary (rewritten by `type_survey --all`), so it cannot
    drift from the committed results."""
    from pathlib import Path

    from remoe.model.type_support import README_BEGIN, readme_summary, replace_readme_block

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert README_BEGIN in readme
    assert replace_readme_block(readme, readme_summary(survey_results())) == readme
