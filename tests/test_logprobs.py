"""Token log-probabilities (logprobs=N, echo) in-process: equal to transformers' own float32 log-softmax, alone and
when the request's prompt is prefilled in chunks beside other requests in the batch engine."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from remoe.model.batch_engine import BatchEngine
from remoe.model.batch_request import BatchRequest, BatchSettings
from remoe.model.engine import LocalEngine
from remoe.model.generation import SamplingParams
from remoe.model.logprobs import MAX_LOGPROBS, TokenLogprob
from remoe.model.tokenizer import load_tokenizer
from tests.conftest import ARCHS, PROMPT, reference_logits

TOL = 1e-4
TOP = 5


def expected_logprobs(model, ids: list[int]) -> torch.Tensor:
    """transformers' float32 log-softmax over the whole sequence [T, V] (row t: the distribution of token t + 1)."""
    return torch.log_softmax(reference_logits(model, ids), dim=-1)


def assert_matches(got: list[TokenLogprob], logp: torch.Tensor, tokens: list[int], top: int) -> None:
    """got[i] is tokens[i]'s log-probability under row i of logp [N, V], with its `top` most likely tokens."""
    assert [g.token_id for g in got] == tokens
    picked = logp.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    assert torch.allclose(torch.tensor([g.logprob for g in got]), picked, atol=TOL, rtol=0)
    values = logp.topk(top, dim=-1).values  # [N, top]
    for g, row, v in zip(got, logp, values, strict=True):
        assert len(g.top_ids) == top
        assert torch.allclose(torch.tensor(g.top_logprobs), v, atol=TOL, rtol=0)
        # the tokens it names have those log-probabilities (the order of near-ties aside)
        assert torch.allclose(row[list(g.top_ids)], v, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_echo_and_logprobs_equal_transformers_log_softmax(arch, tiny_model, reference):
    path = tiny_model(arch)
    ids = load_tokenizer(path).encode(PROMPT)
    engine = LocalEngine(path, device="cpu", dtype=torch.float32)
    result = engine.generate(token_ids=ids, max_new_tokens=6, stop_on_eos=False, logprobs=TOP, echo=True)
    logp = expected_logprobs(reference(arch), ids + result.token_ids)  # [T + 6, V]
    assert len(result.prompt_logprobs) == len(ids) - 1  # the first prompt token has no log-probability
    assert_matches(result.prompt_logprobs, logp[: len(ids) - 1], ids[1:], TOP)
    assert_matches(result.logprobs, logp[len(ids) - 1 : -1], result.token_ids, TOP)


def test_logprobs_zero_gives_the_chosen_tokens_only_and_no_echo_no_prompt(tiny_model, reference):
    path = tiny_model("mixtral")
    ids = load_tokenizer(path).encode(PROMPT)
    result = LocalEngine(path, device="cpu", dtype=torch.float32).generate(token_ids=ids, max_new_tokens=3, logprobs=0)
    assert result.prompt_logprobs == []
    assert [g.token_id for g in result.logprobs] == result.token_ids
    assert all(g.top_ids == () for g in result.logprobs)
    plain = LocalEngine(path, device="cpu", dtype=torch.float32).generate(token_ids=ids, max_new_tokens=3)
    assert plain.logprobs == [] and plain.token_ids == result.token_ids


@pytest.mark.parametrize("bad", [-1, MAX_LOGPROBS + 1])
def test_logprobs_out_of_range_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=bad)


@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])  # gpt_oss: sliding-window layers
def test_echo_requests_prefilled_in_chunks_beside_others_score_as_when_alone(arch, tiny_model, reference):
    """Three requests join 20 ms apart; a 4-token prefill chunk spreads each prompt over several packed steps
    with the others' decode tokens. Every prompt and generated log-probability equals transformers'."""
    path = tiny_model(arch)
    tokenizer = load_tokenizer(path)
    prompts = [tokenizer.encode(p) for p in (PROMPT, "Write a short poem about the sea", "SELECT name FROM t")]
    engine = LocalEngine(path, device="cpu", dtype=torch.float32)
    batch = BatchEngine(engine.model, engine.device, BatchSettings(max_requests=3, prefill_chunk=4))
    jobs = [
        BatchRequest(f"r{i}", p, SamplingParams(max_new_tokens=5, stop_on_eos=False, logprobs=TOP, echo=i != 1), set())
        for i, p in enumerate(prompts)
    ]

    def run(i: int) -> None:
        time.sleep(0.02 * i)
        list(batch.submit(jobs[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    batch.close()
    assert batch.packed_steps > 0
    for job in jobs:
        ids = job.prompt
        logp = expected_logprobs(reference(arch), ids + job.trace.tokens)
        if job.params.echo:
            assert_matches(job.trace.prompt_logprobs, logp[: len(ids) - 1], ids[1:], TOP)
        else:
            assert job.trace.prompt_logprobs == []
        assert_matches(job.trace.logprobs, logp[len(ids) - 1 : -1], job.trace.tokens, TOP)
