"""Plain prefill / decode functions over a transformers causal LM with the cache its `generate` would make.

V = vocab size, T = prompt tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers import Cache, DynamicCache, PreTrainedModel

from remoe.model.logprobs import MAX_LOGPROBS, TokenLogprob, prompt_logprobs, token_logprobs


@dataclass(slots=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_on_eos: bool = True
    logprobs: int | None = None  # each new token's log-probability and this many alternatives (None: none)
    echo: bool = False  # also the prompt tokens' log-probabilities (from the second on)

    def __post_init__(self) -> None:
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:  # NaN fails too (it would poison sampling)
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class ModelOwnCache:
    """For a model that makes a cache of its own (transformers' `generate` gives it none, e.g. MiniMax's
    MiniMaxCache): empty until the first forward, then the cache that forward returned."""

    cache: Cache | None = None


def new_cache(model: PreTrainedModel) -> DynamicCache | ModelOwnCache:
    """The cache transformers' `generate` would make for `model`."""
    if not type(model)._supports_default_dynamic_cache():
        return ModelOwnCache()
    return DynamicCache(config=model.config.get_text_config(decoder=True))


def forward_logits(
    model: PreTrainedModel,
    device: torch.device,
    token_ids: list[int],
    cache: DynamicCache | ModelOwnCache,
    all_positions: bool = False,
) -> torch.Tensor:
    """Run `token_ids` after what `cache` holds; logits of the last position [V] (or of all, [T, V])."""
    input_ids = torch.tensor([token_ids], dtype=torch.long, device=device)  # [1, T]
    given = cache.cache if isinstance(cache, ModelOwnCache) else cache
    out = model(input_ids=input_ids, cache=given, use_cache=True, logits_to_keep=0 if all_positions else 1)
    if isinstance(cache, ModelOwnCache):
        cache.cache = out.cache
    return out.logits[0] if all_positions else out.logits[0, -1]


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token from logits [V]: argmax when greedy, else temperature + nucleus sampling."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)  # [V]
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def time_per_output_token(first_token_s: float, last_token_s: float, tokens: int) -> float:
    """TPOT, the one definition everywhere: the time from the first to the last of `tokens` output tokens, per
    token after the first."""
    return (last_token_s - first_token_s) / max(1, tokens - 1)


@dataclass
class GenerationTrace:
    """What one generation did: filled in as `generate_tokens` runs."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token, when asked for
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # prompt tokens 2..T's, with echo
    finish_reason: str = ""  # "stop" (EOS) or "length"; "" while running
    start: float = 0.0
    first_token_at: float = 0.0
    end: float = 0.0

    @property
    def ttft_s(self) -> float:
        return self.first_token_at - self.start

    @property
    def tpot_s(self) -> float:
        return time_per_output_token(self.first_token_at, self.end, len(self.tokens))


def generate_tokens(
    model: PreTrainedModel,
    device: torch.device,
    prompt_ids: list[int],
    params: SamplingParams,
    eos_token_ids: set[int],
    trace: GenerationTrace,
    on_decode: Callable[[], None] | None = None,
) -> Iterator[int]:
    """Prefill, then decode one token at a time with a request-private KV cache; yield each new token.

    `on_decode` runs once after prefill (e.g. to switch activation recording to the decode phase).
    """
    generator = make_generator(params.seed)
    trace.start = time.perf_counter()
    cache = new_cache(model)
    with torch.inference_mode():
        logits = forward_logits(model, device, prompt_ids, cache, all_positions=params.echo)
        if params.echo:  # [T, V]: every prompt position's logits, the last one's for the first new token
            trace.prompt_logprobs = prompt_logprobs(logits, prompt_ids, params.logprobs or 0)
            logits = logits[-1]
    if on_decode is not None:
        on_decode()
    while True:
        next_id = sample_next(logits, params, generator)
        if params.logprobs is not None:
            trace.logprobs.extend(token_logprobs(logits[None], [next_id], params.logprobs))
        trace.tokens.append(next_id)
        trace.end = time.perf_counter()
        if len(trace.tokens) == 1:
            trace.first_token_at = trace.end
        if params.stop_on_eos and next_id in eos_token_ids:
            trace.finish_reason = "stop"
        elif len(trace.tokens) >= params.max_new_tokens:
            trace.finish_reason = "length"
        yield next_id
        if trace.finish_reason:
            return
        with torch.inference_mode():
            logits = forward_logits(model, device, [next_id], cache)
