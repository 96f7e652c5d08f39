"""The streamed forms of a completion: OpenAI's chunk objects, one server-sent event per gateway chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator

from remoe.gateway.refused import Refused
from remoe.openai_api.chunks import ChunkStream, usage_body
from remoe.openai_api.errors import from_refused


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
    stream: ChunkStream, first, model: str, created: int, include_usage: bool, kind: str
) -> AsyncIterator[dict]:
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
    try:
        async for chunk in _chunks(stream, first):
            finish = chunk.finish_reason or None
            if chat:
                delta = {"content": chunk.text_delta} if chunk.text_delta else {}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": chunk.text_delta, "logprobs": None, "finish_reason": finish}
            if finish:
                usage = usage_body(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            if chunk.text_delta or finish:  # a token that completes no character yet sends nothing
                yield event(choice)
    except Refused as e:  # after the 200 went out: the error becomes the stream's last event
        yield from_refused(e).body()
        return
    if include_usage and usage is not None:
        yield event({}, usage)


def completion_events(stream: ChunkStream, first, model: str, created: int, include_usage: bool):
    return _events(stream, first, model, created, include_usage, "text_completion")


def chat_events(stream: ChunkStream, first, model: str, created: int, include_usage: bool):
    return _events(stream, first, model, created, include_usage, "chat.completion.chunk")
