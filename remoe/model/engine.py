"""LocalEngine: the whole model in one process, through the backbone and a local expert executor."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from remoe.checkpoint.dtypes import resolve_dtype
from remoe.checkpoint.weights import ModelWeights, open_weights
from remoe.errors import RemoeError
from remoe.experts.executor import ExpertExecutor, LocalExpertExecutor
from remoe.model.activations import ActivationRecord, ActivationRecorder, current_recorder
from remoe.model.backbone import Backbone
from remoe.model.generation import GenerationTrace, SamplingParams, forward_logits, generate_tokens, new_cache
from remoe.model.logprobs import TokenLogprob
from remoe.model.tokenizer import eos_token_ids, load_tokenizer


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens only
    text: str
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS) or "length"
    ttft_s: float  # time to first token
    tpot_s: float  # mean time per output token after the first
    activations: ActivationRecord
    timings: dict[str, float] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with logprobs=N: one per generated token
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # with echo=True: prompt tokens 2..T's


class LocalEngine:
    """`LocalEngine(model_dir).generate(token_ids=[...] | prompt="...", max_new_tokens=N)`.

    `model_dir` is an original Hugging Face checkpoint or a `remoe split` directory. Routed experts run on
    the CPU in this process (lazily loaded, optionally under `expert_budget_bytes` with LRU eviction); the
    backbone runs on CUDA when available. `dtype` defaults to the checkpoint's own, as from_pretrained's.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        expert_budget_bytes: int | None = None,
        executor: ExpertExecutor | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.weights: ModelWeights = open_weights(self.model_dir)
        dtype = resolve_dtype(self.weights.config, dtype)
        self.executor = executor or LocalExpertExecutor(self.weights, budget_bytes=expert_budget_bytes, dtype=dtype)
        self.backbone = Backbone(self.weights, self.executor, device=device, dtype=dtype)
        self.tokenizer: PreTrainedTokenizerBase | None = load_tokenizer(self.model_dir)
        self.eos_token_ids = eos_token_ids(self.model_dir, self.backbone.model.config)
        self._lock = threading.Lock()  # one request at a time: the expert cache and timings stay readable

    def close(self) -> None:
        """Free the loaded experts now. Dropping the engine frees them only at the next full garbage collection
        (transformers' modules hold reference cycles): measured, a dropped DeepSeek-V2-Lite-shaped engine held its
        3.2 GB of experts through a whole later benchmark in the same process. A closed engine still serves: it
        loads experts again as they are routed to."""
        cache = getattr(self.executor, "cache", None)  # a LocalExpertExecutor's; a dispatching one holds none here
        if cache is not None:
            cache.clear()

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model(self):
        return self.backbone.model

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise RemoeError(f"{self.model_dir} has no tokenizer files; pass token_ids instead of a prompt")
        return self.tokenizer.encode(prompt)

    def decode(self, token_ids: list[int]) -> str:
        return "" if self.tokenizer is None else self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _prompt_ids(self, token_ids: list[int] | None, prompt: str | None) -> list[int]:
        if (token_ids is None) == (prompt is None):
            raise ValueError("pass exactly one of token_ids and prompt")
        ids = list(token_ids) if token_ids is not None else self.encode(prompt)
        vocab = self.backbone.model.config.get_text_config().vocab_size
        if not ids:
            raise ValueError("the prompt is empty")
        bad = [t for t in ids if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return ids

    @torch.inference_mode()
    def prefill_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits of every prompt position [T, V], as float32 on the CPU."""
        with self._lock:
            cache = new_cache(self.model)
            logits = forward_logits(self.model, self.device, list(token_ids), cache, all_positions=True)
            return logits.float().cpu()

    def stream(self, token_ids: list[int] | None = None, prompt: str | None = None, **sampling) -> Iterator[int]:
        """Yield generated token ids one by one."""
        yield from self._generate(self._prompt_ids(token_ids, prompt), SamplingParams(**sampling), [])

    def generate(self, token_ids: list[int] | None = None, prompt: str | None = None, **sampling) -> GenerationResult:
        ids = self._prompt_ids(token_ids, prompt)
        result_box: list[GenerationResult] = []
        for _ in self._generate(ids, SamplingParams(**sampling), result_box):
            pass
        return result_box[0]

    def _generate(self, ids: list[int], params: SamplingParams, result_box: list[GenerationResult]) -> Iterator[int]:
        """Yield tokens as they are made; append the GenerationResult to `result_box` at the end."""
        arch = self.backbone.arch
        recorder = ActivationRecorder(arch.layer_indices, arch.num_experts, arch.top_k)
        trace = GenerationTrace()
        with self._lock:
            token = current_recorder.set(recorder)
            try:
                yield from generate_tokens(
                    self.model, self.device, ids, params, self.eos_token_ids, trace, on_decode=recorder.start_decode
                )
            finally:
                current_recorder.reset(token)
        record = recorder.record
        record.n_in, record.n_out = len(ids), len(trace.tokens)
        result_box.append(
            GenerationResult(
                token_ids=trace.tokens,
                text=self.decode(trace.tokens),
                prompt_tokens=len(ids),
                finish_reason=trace.finish_reason,
                ttft_s=trace.ttft_s,
                tpot_s=trace.tpot_s,
                activations=record,
                timings={"total_s": trace.end - trace.start},
                logprobs=trace.logprobs,
                prompt_logprobs=trace.prompt_logprobs,
            )
        )
