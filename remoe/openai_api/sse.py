"""The streamed forms of a completion: OpenAI's chunk objects, one server-sent event per gateway chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator

from remoe.gateway.refused import Refused
from remoe.openai_api.chunks import ChunkStream, usage_body
from remoe.openai_api.errors import from_refused
from remoe.openai_api.logprob_bodies import TokenText, chat_logprobs, completion_logprobs


async def _chunks(stream: ChunkStream, first) -> AsyncIterator:
    """The gateway chunks; the call is closed however the response ends (done, error, or the client left)."""
    try:
        chunk = first
        while chunk is not None:
            yield chunk
            chunk = await stream.next()
    finally:
        stream.close()


async def _events(
    stream: ChunkStream, first, model: str, created: int, include_usage: bool, kind: str, text_of: TokenText | None
) -> AsyncIterator[dict]:
    """`text_of` (with logprobs): each token's event carries its log-probabilities, even one with no text yet."""
    chat = kind == "chat.completion.chunk"
    base = {
        "id": ("chatcmpl-" if chat else "cmpl-") + (first.request_id if first is not None else ""),
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }

    def event(choice: dict, usage: dict | None = None) -> dict:
        out = {**base, "choices": [choice] if choice else []}
        if include_usage:
            out["usage"] = usage
        return out

    if chat:
        yield event(
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        )
    usage = None
    offset = 0  # characters of the completion so far (its logprobs' text_offset)
    try:
        async for chunk in _chunks(stream, first):
            finish = chunk.finish_reason or None
            scores = None
            if text_of is not None:
                if chat:
                    scores = chat_logprobs(text_of, list(chunk.logprobs))
                else:
                    scores = completion_logprobs(text_of, list(chunk.token_ids), list(chunk.logprobs), offset)
                    offset += sum(len(text_of(t)) for t in chunk.token_ids)
            if chat:
                delta = {"content": chunk.text_delta} if chunk.text_delta else {}
                choice = {"index": 0, "delta": delta, "logprobs": scores, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": chunk.text_delta, "logprobs": scores, "finish_reason": finish}
            if finish:
                usage = usage_body(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.expert_format)
            if chunk.text_delta or finish or scores:  # a token that completes no character (and no logprobs): none
                yield event(choice)
    except Refused as e:  # after the 200 went out: the error becomes the stream's last event
        yield from_refused(e).body()
        return
    if include_usage and usage is not None:
        yield event({}, usage)


def completion_events(stream: ChunkStream, first, model: str, created: int, include_usage: bool, text_of=None):
    return _events(stream, first, model, created, include_usage, "text_completion", text_of)


def chat_events(stream: ChunkStream, first, model: str, created: int, include_usage: bool, text_of=None):
    return _events(stream, first, model, created, include_usage, "chat.completion.chunk", text_of)
