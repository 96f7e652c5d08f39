"""Continuous batching in-process: requests that share decode steps get exactly their batch-1 outputs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from remoe.model.activations import ActivationRecorder
from remoe.model.batch_engine import BatchEngine
from remoe.model.batch_request import BatchRequest, BatchSettings, DeadlinePassed, RequestCancelled
from remoe.model.engine import LocalEngine
from remoe.model.generation import SamplingParams, forward_logits, new_cache
from remoe.model.step_cache import (
    PackedStepCache,
    StepCache,
    batching_unsupported,
    decode_masks,
    layer_types,
    packed_masks,
)
from tests.conftest import ARCHS, reference_generate

# Prompt lengths: 1 token, past gpt_oss's 16-token sliding window, past the 16-token prefill chunk used below.
PROMPT_LENGTHS = (3, 40, 9, 17, 1, 25, 6, 60)
NEW_TOKENS = (12, 5, 9, 16, 3, 10, 7, 4)


def _prompts(vocab: int) -> list[list[int]]:
    # Ids from 8 up: generate reads the pad id (1 here) in a prompt as padding and masks it.
    return [[8 + (7 * i + 13 * n) % (vocab - 8) for i in range(n)] for n in PROMPT_LENGTHS]


def _request(name: str, prompt: list[int], new_tokens: int, **kw) -> BatchRequest:
    return BatchRequest(name, prompt, SamplingParams(max_new_tokens=new_tokens, stop_on_eos=False), set(), **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_batched_decode_step_gives_each_request_its_own_logits(arch, tiny_model, reference):
    """Four requests of different lengths decoded together: each row's logits equal transformers' batch-1
    logits for that request (1e-4) at every step, and its greedy tokens equal generate's."""
    model_ref = reference(arch)
    engine = LocalEngine(tiny_model(arch), device="cpu", dtype=torch.float32)
    model, types = engine.model, layer_types(engine.model.config)
    prompts = _prompts(model.config.vocab_size)[:4]
    steps = 10
    caches, tokens, logits = [], [[] for _ in prompts], [[] for _ in prompts]
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            caches.append(new_cache(model))
            row = forward_logits(model, engine.device, prompt, caches[i])
            tokens[i].append(int(row.argmax()))
            logits[i].append(row)
        for _ in range(steps - 1):
            out = model(
                input_ids=torch.tensor([[t[-1]] for t in tokens]),
                position_ids=torch.tensor([[c.get_seq_length()] for c in caches]),
                attention_mask=decode_masks(caches, types, torch.float32, engine.device),
                cache=StepCache(caches),
                use_cache=True,
                logits_to_keep=1,
            )
            for i in range(len(prompts)):
                tokens[i].append(int(out.logits[i, -1].argmax()))
                logits[i].append(out.logits[i, -1])
        for i, prompt in enumerate(prompts):
            ref = model_ref.generate(
                torch.tensor([prompt]),
                max_new_tokens=steps,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                eos_token_id=None,
            )
            assert tokens[i] == ref.sequences[0, len(prompt) :].tolist()
            torch.testing.assert_close(torch.stack(logits[i]), torch.cat(ref.logits), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_packed_step_of_decode_tokens_and_prompt_chunks_gives_each_request_its_logits(arch, tiny_model, reference):
    """Two requests decoding, a third mid-prompt (past gpt_oss's sliding window) and a fourth's first chunk, as
    one sequence: every request's next-token logits equal transformers' for its own tokens (1e-4)."""
    model_ref = reference(arch)
    engine = LocalEngine(tiny_model(arch), device="cpu", dtype=torch.float32)
    model, types = engine.model, layer_types(engine.model.config)
    prompts = _prompts(model.config.vocab_size)
    decode_a, decode_b, long_prompt, fresh = prompts[0], prompts[2], prompts[7], prompts[3]
    caches = [new_cache(model) for _ in range(4)]
    with torch.inference_mode():
        for cache, prompt in zip(caches, (decode_a, decode_b, long_prompt[:20]), strict=False):
            forward_logits(model, engine.device, prompt, cache)
        segments = [[11], [12], long_prompt[20:45], fresh[:10]]
        pasts = [len(decode_a), len(decode_b), 20, 0]
        lengths = [len(t) for t in segments]
        mask = packed_masks(caches, lengths, pasts, types, torch.float32, engine.device)
        out = model(
            input_ids=torch.tensor([[t for seq in segments for t in seq]]),
            position_ids=torch.cat([p + torch.arange(n) for p, n in zip(pasts, lengths, strict=True)])[None],
            attention_mask=mask,
            cache=PackedStepCache(caches, lengths),
            use_cache=True,
            logits_to_keep=torch.tensor(lengths).cumsum(0) - 1,
        )
        wanted = [decode_a + [11], decode_b + [12], long_prompt[:45], fresh[:10]]
        for row, ids in enumerate(wanted):
            expected = model_ref(torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(out.logits[0, row], expected, atol=1e-4, rtol=0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # cuda: the backbone there, experts on the CPU


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_eight_requests_joining_at_different_times_each_get_their_exact_tokens(arch, device, tiny_model, reference):
    engine = LocalEngine(tiny_model(arch), device=device, dtype=torch.float32)
    prompts = _prompts(engine.model.config.vocab_size)
    model_ref = reference(arch)
    model_ref.generation_config.eos_token_id = None  # the requests below ignore EOS too
    expected = [reference_generate(model_ref, p, n) for p, n in zip(prompts, NEW_TOKENS, strict=True)]
    batch = BatchEngine(engine.model, engine.device, BatchSettings(max_requests=6, prefill_chunk=16))
    got: list[list[int] | None] = [None] * len(prompts)
    arch_info = engine.backbone.arch
    jobs = [
        _request(
            f"r{i}", p, n, recorder=ActivationRecorder(arch_info.layer_indices, arch_info.num_experts, arch_info.top_k)
        )
        for i, (p, n) in enumerate(zip(prompts, NEW_TOKENS, strict=True))
    ]

    def run(i: int) -> None:
        time.sleep(0.02 * i)  # arrivals spread over the others' prefill and decode steps
        got[i] = list(batch.submit(jobs[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    batch.close()
    assert got == expected
    assert max(batch.step_requests) > 1, "some decode steps should have carried several requests"
    assert batch.packed_steps > 0, "some prompts' chunks should have been packed with other requests' tokens"
    # Billing: the requests' shares add up to the loop's busy time; sharing is recorded per request.
    assert sum(j.backbone_s for j in jobs) == pytest.approx(batch.busy_s, rel=1e-9)
    assert any(j.shared_steps > 0 and j.peers > 0 for j in jobs)
    assert all(j.trace.finish_reason == "length" for j in jobs)
    # Each request's activation record counts its own rows only: the same as when it runs alone.
    for job in jobs:
        alone = engine.generate(token_ids=job.prompt, max_new_tokens=job.params.max_new_tokens, stop_on_eos=False)
        assert (job.recorder.record.prefill == alone.activations.prefill).all(), job.request_id
        assert (job.recorder.record.decode == alone.activations.decode).all(), job.request_id


def test_a_cancelled_and_an_expired_request_end_alone(tiny_model, reference):
    arch = "mixtral"
    engine = LocalEngine(tiny_model(arch), device="cpu", dtype=torch.float32)
    prompts = _prompts(engine.model.config.vocab_size)
    model_ref = reference(arch)
    model_ref.generation_config.eos_token_id = None
    batch = BatchEngine(engine.model, engine.device)
    cancelled = _request("cancel-me", prompts[0], 400)
    expired = _request("expire-me", prompts[1], 400, deadline=time.time() + 0.3)
    others = [_request(f"r{i}", prompts[i], 24) for i in range(2, 6)]
    streams = {job.request_id: batch.submit(job) for job in [cancelled, expired, *others]}
    outputs: dict[str, list[int]] = {}
    errors: dict[str, BaseException] = {}

    def consume(name: str) -> None:
        try:
            for token in streams[name]:
                outputs.setdefault(name, []).append(token)
                if name == "cancel-me" and len(outputs[name]) == 3:
                    batch.cancel(cancelled)
        except (DeadlinePassed, RequestCancelled) as e:
            errors[name] = e

    threads = [threading.Thread(target=consume, args=(name,)) for name in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    batch.close()
    assert isinstance(errors["cancel-me"], RequestCancelled) and len(outputs["cancel-me"]) < 400
    assert isinstance(errors["expire-me"], DeadlinePassed) and len(outputs.get("expire-me", [])) < 400
    for i, job in enumerate(others, start=2):
        assert outputs[job.request_id] == reference_generate(model_ref, prompts[i], 24), job.request_id


class _FailOnce:
    """An executor whose first call fails (a destination that breaks once), computing locally after."""

    def __init__(self, inner) -> None:
        self.inner, self.failed = inner, False

    def compute(self, layer, hidden_states, top_k_index, top_k_weights):
        if not self.failed:
            self.failed = True
            raise RuntimeError("expert destination broke")
        return self.inner.compute(layer, hidden_states, top_k_index, top_k_weights)


def test_a_failed_forward_ends_only_the_requests_in_it(tiny_model, reference):
    engine = LocalEngine(tiny_model("olmoe"), device="cpu", dtype=torch.float32)
    engine.backbone.bind(_FailOnce(engine.executor))
    prompts = _prompts(engine.model.config.vocab_size)
    model_ref = reference("olmoe")
    model_ref.generation_config.eos_token_id = None
    batch = BatchEngine(engine.model, engine.device)
    with pytest.raises(RuntimeError, match="expert destination broke"):
        list(batch.submit(_request("first", prompts[0], 5)))
    assert list(batch.submit(_request("second", prompts[2], 9))) == reference_generate(model_ref, prompts[2], 9)
    batch.close()


def test_every_architecture_here_can_be_batched(tiny_model):
    for arch in ARCHS:
        engine = LocalEngine(tiny_model(arch), device="cpu", dtype=torch.float32)
        assert batching_unsupported(engine.model.config) is None, arch


def test_settings_reject_an_empty_batch():
    with pytest.raises(ValueError, match="max_requests"):
        BatchSettings(max_requests=0)


def test_a_seeded_sampled_request_draws_the_same_tokens_alone_and_in_a_batch(tiny_model):
    """Each row samples with its own request's temperature, top_p and seeded generator."""
    engine = LocalEngine(tiny_model("qwen3_moe"), device="cpu", dtype=torch.float32)
    prompts = _prompts(engine.model.config.vocab_size)
    sampled = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=7, stop_on_eos=False)
    batch = BatchEngine(engine.model, engine.device)
    alone = list(batch.submit(BatchRequest("alone", prompts[0], sampled, set())))
    streams = [batch.submit(_request(f"greedy{i}", prompts[i], 12)) for i in range(1, 4)]
    together = batch.submit(BatchRequest("together", prompts[0], sampled, set()))
    outputs = [list(s) for s in streams]
    assert list(together) == alone
    assert all(len(o) == 12 for o in outputs)
    batch.close()


def test_remoe_inspect_says_how_concurrent_requests_are_served(tiny_model, capsys):
    from remoe.cli import main

    assert main(["inspect", str(tiny_model("gpt_oss"))]) == 0
    assert "batching: concurrent requests share each decode step" in capsys.readouterr().out


def test_a_model_whose_cache_has_linear_attention_layers_is_served_unbatched():
    """A hybrid config (Qwen3-Next: linear-attention layers between full ones) gets a reason, not a batch."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("qwen3_next", num_hidden_layers=4, layer_types=None)
    reason = batching_unsupported(config)
    assert reason is not None and "layers" in reason


def test_a_model_whose_layers_pair_linear_attention_with_a_window_is_served_unbatched():
    """Inkling2's cache layers are key/value layers and linear-attention state at once: not stackable."""
    from transformers import AutoConfig

    reason = batching_unsupported(AutoConfig.for_model("inkling2_text", num_hidden_layers=2))
    assert reason is not None and "LinearAttentionAnd" in reason


def test_a_model_that_keeps_a_cache_of_its_own_is_served_unbatched():
    """MiniMax makes its own cache class (transformers' generate does not hand it a DynamicCache)."""
    from transformers import AutoConfig

    reason = batching_unsupported(AutoConfig.for_model("minimax", num_hidden_layers=2))
    assert reason is not None and "cache of its own" in reason
