"""Token log-probabilities in OpenAI's two shapes: a completion's `logprobs` object (tokens, token_logprobs,
top_logprobs as {token: logprob} dicts, text_offset; with echo the prompt's first token has null entries) and a
chat choice's `logprobs.content` list. Token strings are each token decoded alone; a model without a tokenizer
names tokens `token_id:N` (vLLM's convention)."""

from __future__ import annotations

from remoe.proto import common_pb2


class TokenText:
    """Token id -> its text, cached (a harness scores the same tokens many times)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = f"token_id:{token_id}" if self.tokenizer is None else self.tokenizer.decode([token_id])
            self._cache[token_id] = text
        return text


def completion_logprobs(
    text_of: TokenText, tokens: list[int], scores: list[common_pb2.TokenLogprob | None], offset: int = 0
) -> dict:
    """The completion `logprobs` object of `tokens` (scores[i]: tokens[i]'s, None for an echoed first token);
    text_offset counts characters from `offset`, each token's text after the one before."""
    strings, offsets = [], []
    for token in tokens:
        strings.append(text_of(token))
        offsets.append(offset)
        offset += len(strings[-1])
    return {
        "tokens": strings,
        "token_logprobs": [None if s is None else s.logprob for s in scores],
        "top_logprobs": [None if s is None else _top(text_of, s) for s in scores],
        "text_offset": offsets,
    }


def _top(text_of: TokenText, score: common_pb2.TokenLogprob) -> dict[str, float]:
    top: dict[str, float] = {}
    for token, logprob in zip(score.top_ids, score.top_logprobs, strict=True):
        top.setdefault(text_of(token), logprob)  # two ids with one text: the likelier one's
    return top


def chat_logprobs(text_of: TokenText, scores: list[common_pb2.TokenLogprob]) -> dict:
    """A chat choice's `logprobs`: one entry per generated token, with its top alternatives."""

    def entry(token: int, logprob: float) -> dict:
        text = text_of(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [
        {
            **entry(s.token_id, s.logprob),
            "top_logprobs": [entry(t, lp) for t, lp in zip(s.top_ids, s.top_logprobs, strict=True)],
        }
        for s in scores
    ]
    return {"content": content, "refusal": None}
