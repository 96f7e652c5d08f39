"""Gateway chunks for the HTTP API: GatewayCore.generate stepped from worker threads, and a whole completion
gathered from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from remoe.gateway.caller import LocalCaller
from remoe.gateway.core import GatewayCore
from remoe.proto import gateway_pb2


def _next_or_none(chunks):
    return next(chunks, None)


def _drain(chunks) -> list:
    return list(chunks)


class ChunkStream:
    """One GatewayCore.generate call. `close()` is the client leaving: the backbone call is cancelled and the
    core's own cleanup (its admission slot, its metrics) runs."""

    def __init__(self, core: GatewayCore, request: gateway_pb2.GenerateRequest, limiter: anyio.CapacityLimiter) -> None:
        self.caller = LocalCaller()
        self._chunks = core.generate(request, self.caller)
        self._limiter = limiter
        self._closed = False

    async def next(self) -> gateway_pb2.GenerateChunk | None:
        """The next chunk, None after the last. Not cancelled midway: a cancelled await returns when the step
        does (at the next token), so close() never meets a running generator."""
        return await anyio.to_thread.run_sync(_next_or_none, self._chunks, limiter=self._limiter)

    async def rest(self) -> list[gateway_pb2.GenerateChunk]:
        """Every remaining chunk, in one worker thread."""
        return await anyio.to_thread.run_sync(_drain, self._chunks, limiter=self._limiter)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.caller.cancel()
        self._chunks.close()


@dataclass
class Completion:
    """One choice as the gateway made it: its text, tokens and (when asked) their log-probabilities."""

    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # common_pb2.TokenLogprob per token (with logprobs)
    prompt_token_ids: list[int] = field(default_factory=list)  # with echo
    prompt_logprobs: list = field(default_factory=list)  # prompt tokens 2..T's (with echo)
    expert_format: str = ""  # "" when the experts are exact

    def usage(self) -> dict:
        return usage_body(self.prompt_tokens, self.completion_tokens, self.expert_format)

    def body(self, kind: str, model: str, created: int, logprobs: dict | None = None) -> dict:
        if kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text}}
        else:
            choice = {"index": 0, "text": self.text}
        choice.update(logprobs=logprobs, finish_reason=self.finish_reason)
        return response_body(kind, model, created, self.request_id, [choice], self.usage())


def response_body(kind: str, model: str, created: int, request_id: str, choices: list[dict], usage: dict) -> dict:
    prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
    return {
        "id": f"{prefix}-{request_id}",
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage,
    }


def usage_body(prompt_tokens: int, completion_tokens: int, expert_format: str = "") -> dict:
    """OpenAI's usage, plus `expert_format` when the model's experts are quantized (so no answer hides it)."""
    body = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if expert_format:
        body["expert_format"] = expert_format
    return body


async def collect(stream: ChunkStream, first: gateway_pb2.GenerateChunk | None) -> Completion:
    chunks = ([first] if first is not None else []) + await stream.rest()
    if not chunks:
        raise RuntimeError("the gateway ended the request without a chunk")
    last = chunks[-1]
    return Completion(
        request_id=last.request_id,
        text="".join(c.text_delta for c in chunks),
        finish_reason=last.finish_reason or "stop",
        prompt_tokens=last.usage.prompt_tokens,
        completion_tokens=last.usage.completion_tokens,
        token_ids=[t for c in chunks for t in c.token_ids],
        logprobs=[lp for c in chunks for lp in c.logprobs],
        prompt_token_ids=list(chunks[0].prompt_token_ids),
        prompt_logprobs=list(chunks[0].prompt_logprobs),
        expert_format=last.usage.expert_format,
    )
