"""LocalEngine: the whole model in one process, through the backbone and a local expert executor."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from remoe.errors import RemoeError
from remoe.experts.executor import ExpertExecutor, LocalExpertExecutor
from remoe.model.activations import ActivationRecord, ActivationRecorder, current_recorder
from remoe.model.backbone import Backbone, resolve_dtype
from remoe.model.generation import SamplingParams, forward_logits, make_generator, new_cache, sample_next
from remoe.model.weights import ModelWeights, open_weights


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
        self.tokenizer: PreTrainedTokenizerBase | None = _load_tokenizer(self.model_dir)
        self.eos_token_ids = _eos_token_ids(self.model_dir, self.backbone.model.config)
        self._lock = threading.Lock()  # one request at a time: the backbone's activations are shared state

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

    @torch.inference_mode()
    def _generate(self, ids: list[int], params: SamplingParams, result_box: list[GenerationResult]) -> Iterator[int]:
        """Yield tokens as they are made; append the GenerationResult to `result_box` at the end."""
        arch = self.backbone.arch
        recorder = ActivationRecorder(arch.layer_indices, arch.num_experts, arch.top_k)
        generator = make_generator(params.seed)
        out: list[int] = []
        finish = "length"
        with self._lock:
            token = current_recorder.set(recorder)
            try:
                start = time.perf_counter()
                cache = new_cache(self.model)
                logits = forward_logits(self.model, self.device, ids, cache)
                first_at = time.perf_counter()
                recorder.phase = "decode"
                while True:
                    next_id = sample_next(logits, params, generator)
                    out.append(next_id)
                    if len(out) == 1:
                        first_at = time.perf_counter()
                    yield next_id
                    if params.stop_on_eos and next_id in self.eos_token_ids:
                        finish = "stop"
                        break
                    if len(out) >= params.max_new_tokens:
                        break
                    logits = forward_logits(self.model, self.device, [next_id], cache)
                end = time.perf_counter()
            finally:
                current_recorder.reset(token)
        record = recorder.record
        record.n_in, record.n_out = len(ids), len(out)
        result_box.append(
            GenerationResult(
                token_ids=out,
                text=self.decode(out),
                prompt_tokens=len(ids),
                finish_reason=finish,
                ttft_s=first_at - start,
                tpot_s=(end - first_at) / max(1, len(out) - 1),
                activations=record,
                timings={"total_s": end - start},
            )
        )


def _load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase | None:
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def _eos_token_ids(model_dir: Path, config) -> set[int]:
    if (model_dir / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(str(model_dir), local_files_only=True).eos_token_id
    else:
        eos = GenerationConfig.from_model_config(config).eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list) else [eos])}
