"""Token log-probabilities from logits the backbone already has: float32 log-softmax of the model's own logits
(before temperature and top_p, as vLLM reports them), the chosen token's and the `top` most likely tokens'.

N = positions, V = vocab size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_LOGPROBS = 20  # alternatives per token, OpenAI's own limit


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top_ids: tuple[int, ...] = ()  # most likely first
    top_logprobs: tuple[float, ...] = ()


def token_logprobs(logits: torch.Tensor, chosen: list[int], top: int) -> list[TokenLogprob]:
    """logits [N, V] (row i: the distribution chosen[i] was drawn from) -> one TokenLogprob per row."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    ids = torch.tensor(chosen, dtype=torch.long, device=logp.device)
    picked = logp.gather(1, ids[:, None])[:, 0].tolist()  # [N]
    if top > 0:
        values, indices = logp.topk(min(top, logp.shape[-1]), dim=-1)  # [N, top]
        top_values, top_indices = values.tolist(), indices.tolist()
    else:
        top_values = top_indices = [[] for _ in chosen]
    return [
        TokenLogprob(token, value, tuple(i), tuple(v))
        for token, value, i, v in zip(chosen, picked, top_indices, top_values, strict=True)
    ]


def keep_top(score: TokenLogprob, top: int) -> TokenLogprob:
    """`score` with only its `top` most likely alternatives."""
    return TokenLogprob(score.token_id, score.logprob, score.top_ids[:top], score.top_logprobs[:top])


def prompt_logprobs(logits: torch.Tensor, prompt: list[int], top: int) -> list[TokenLogprob]:
    """All-position prefill logits [T, V] of `prompt` -> the log-probabilities of prompt[1:] (T - 1 of them:
    row t predicts token t + 1)."""
    return token_logprobs(logits[:-1], prompt[1:], top) if len(prompt) > 1 else []
