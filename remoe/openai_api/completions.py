"""/v1/completions without stream: every (prompt, choice) its own gateway request, all at once (the backbone
batches them), answered as one body with a choice per pair, `index` = prompt * n + choice.

Echo puts the prompt before the completion (text and logprobs, the prompt's first token with null entries);
max_tokens 0 with echo scores the prompt only: the backbone makes one token (from the prefill it runs anyway),
which the answer leaves out.
"""

from __future__ import annotations

import time

import anyio
from fastapi import Request

from remoe.gateway.refused import Refused
from remoe.openai_api.chunks import ChunkStream, Completion, collect, response_body, usage_body
from remoe.openai_api.errors import APIError, from_refused
from remoe.openai_api.logprob_bodies import completion_logprobs
from remoe.openai_api.schema import CompletionRequest

DISCONNECT_POLL_S = 0.25


async def answer_completions(front, body: CompletionRequest, requests: list, http: Request) -> dict:
    """`requests`: the GenerateRequest of each (prompt, choice), in index order."""
    streams = [front.stream(r) for r in requests]
    done: list[Completion | None] = [None] * len(streams)

    async def one(i: int) -> None:
        done[i] = await _complete(streams[i])

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_when_gone, http, streams)
            async with anyio.create_task_group() as choices:
                for i in range(len(streams)):
                    choices.start_soon(one, i)
            group.cancel_scope.cancel()
    except* Refused as errors:  # (nested: the choices' group inside the watcher's)
        raise from_refused(_first_leaf(errors)) from None
    finally:
        for stream in streams:
            stream.close()
    return _body(front, body, [d for d in done if d is not None])


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _complete(stream: ChunkStream) -> Completion:
    first = await stream.next()
    return await collect(stream, first)


async def _cancel_when_gone(http: Request, streams: list[ChunkStream]) -> None:
    """A client that hangs up before the answer cancels the backbone's work for every choice."""
    while not await http.is_disconnected():
        await anyio.sleep(DISCONNECT_POLL_S)
    for stream in streams:
        stream.caller.cancel()


def _body(front, body: CompletionRequest, done: list[Completion]) -> dict:
    if not done:
        raise APIError(500, "the gateway answered no choice")
    score_only = body.max_tokens == 0
    prompts = body.prompts
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, completion in enumerate(done):
        prompt = prompts[index // body.n]
        if index % body.n == 0:
            prompt_tokens += completion.prompt_tokens
        tokens, scores, text = [], [], ""
        if body.echo:
            text = prompt if isinstance(prompt, str) else front.decode(completion.prompt_token_ids)
            tokens += completion.prompt_token_ids
            scores += [None, *completion.prompt_logprobs]
        if not score_only:
            text += completion.text
            tokens += completion.token_ids
            scores += completion.logprobs
            completion_tokens += completion.completion_tokens
        logprobs = completion_logprobs(front.token_text, tokens, scores) if body.logprobs is not None else None
        finish = "length" if score_only else completion.finish_reason
        choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
    usage = usage_body(prompt_tokens, completion_tokens, done[0].expert_format)
    return response_body("text_completion", front.model_name, int(time.time()), done[0].request_id, choices, usage)
