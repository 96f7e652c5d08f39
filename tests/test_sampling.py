"""Sampling parameters: validated, seeded sampling reproducible, tiny top-p collapses to greedy."""

from __future__ import annotations

import pytest
import torch

from remoe.model.engine import LocalEngine
from remoe.model.generation import SamplingParams, sample_next
from tests.conftest import PROMPT


@pytest.fixture(scope="module")
def engine(tiny_model):
    return LocalEngine(tiny_model("qwen3_moe"), device="cpu")


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(engine):
    a = engine.generate(prompt=PROMPT, max_new_tokens=16, temperature=1.5, seed=7).token_ids
    b = engine.generate(prompt=PROMPT, max_new_tokens=16, temperature=1.5, seed=7).token_ids
    greedy = engine.generate(prompt=PROMPT, max_new_tokens=16).token_ids
    assert a == b
    assert a != greedy


def test_tiny_top_p_keeps_only_the_top_token(engine):
    greedy = engine.generate(prompt=PROMPT, max_new_tokens=8).token_ids
    assert engine.generate(prompt=PROMPT, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=1).token_ids == greedy


def test_nucleus_never_picks_outside_the_top_p_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), g) for _ in range(200)}
    assert picks == {0, 1}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_bad_prompts_are_named(engine):
    with pytest.raises(ValueError, match="exactly one"):
        engine.generate(max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        engine.generate(token_ids=[], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"outside the vocabulary"):
        engine.generate(token_ids=[1, 10**6], max_new_tokens=2)


def test_stream_yields_the_same_tokens_as_generate(engine):
    assert (
        list(engine.stream(prompt=PROMPT, max_new_tokens=6))
        == engine.generate(prompt=PROMPT, max_new_tokens=6).token_ids
    )


def test_generation_stops_at_eos(engine):
    eos = next(iter(engine.eos_token_ids))
    first = engine.generate(prompt=PROMPT, max_new_tokens=1).token_ids[0]
    engine.eos_token_ids = {first}
    try:
        result = engine.generate(prompt=PROMPT, max_new_tokens=8)
    finally:
        engine.eos_token_ids = {eos}
    assert result.token_ids == [first] and result.finish_reason == "stop"


def test_dtype_defaults_to_the_checkpoint_dtype_like_from_pretrained(tiny_model, tmp_path):
    import json
    import shutil

    ckpt = tmp_path / "bf16"
    shutil.copytree(tiny_model("mixtral"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (ckpt / "config.json").write_text(json.dumps(config))
    engine = LocalEngine(ckpt, device="cpu")
    assert engine.backbone.dtype == torch.bfloat16 and engine.executor.dtype == torch.bfloat16
    assert engine.model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert len(engine.generate(prompt=PROMPT, max_new_tokens=4).token_ids) == 4
    assert LocalEngine(ckpt, device="cpu", dtype="float32").backbone.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        LocalEngine(ckpt, device="cpu", dtype="int8")
