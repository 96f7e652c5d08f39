"""Token log-probabilities as the SDK returns them (float32 log-softmax of the model's own logits, before
temperature and top_p): a generated token's with logprobs=N, a prompt token's with echo=True."""

from __future__ import annotations

from dataclasses import dataclass

from remoe.proto import common_pb2


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top_ids: tuple[int, ...] = ()  # the most likely tokens at its position, most likely first (N of them)
    top_logprobs: tuple[float, ...] = ()

    @classmethod
    def from_proto(cls, msg: common_pb2.TokenLogprob) -> TokenLogprob:
        return cls(msg.token_id, msg.logprob, tuple(msg.top_ids), tuple(msg.top_logprobs))


@dataclass(slots=True)
class Score:
    """A prompt scored (Client.score): its token ids and the log-probability of each from the second on
    (logprobs[i] is token_ids[i + 1]'s: nothing precedes the first token)."""

    token_ids: list[int]
    logprobs: list[TokenLogprob]

    def total(self, start: int = 1) -> float:
        """The summed log-probability of token_ids[start:] (e.g. a continuation after a context of `start`
        tokens): the log-likelihood an evaluation harness compares across choices."""
        if start < 1:
            raise ValueError("the first token has no log-probability: start at 1 or later")
        return sum(lp.logprob for lp in self.logprobs[start - 1 :])
