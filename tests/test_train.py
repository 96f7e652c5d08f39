"""`remoe train-tiny`: a short run learns (loss falls) and saves a checkpoint Remoe serves token-exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from remoe.corpus.build import build_corpus
from remoe.model.engine import LocalEngine
from remoe.model.train import TrainSpec, train_tiny
from tests.conftest import reference_generate


@pytest.mark.slow
def test_a_short_training_run_learns_and_is_served_exactly(tmp_path):
    texts = [p.prompt for p in build_corpus(progress=False)[:1500]]
    spec = TrainSpec(layers=2, experts=4, hidden=64, vocab=512, seq_len=64, batch=8, steps=40, lr=5e-3)
    summary = train_tiny(texts, tmp_path / "trained", spec, progress=False)
    assert summary["steps"] == 40
    assert summary["last_loss"] < summary["first_loss"] - 0.5, summary

    engine = LocalEngine(tmp_path / "trained", device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "trained", dtype=torch.float32).eval()
    ids = engine.encode("The quick brown fox")
    assert engine.generate(token_ids=ids, max_new_tokens=16).token_ids == reference_generate(reference, ids, 16)
