"""A GenerateRequest checked before any work is done for it: its prompt as token ids, its limits and SLOs."""

from __future__ import annotations

import grpc

from remoe.constants import MAX_PROMPT_CHARS
from remoe.gateway.refused import Refused
from remoe.model.logprobs import MAX_LOGPROBS
from remoe.proto import gateway_pb2


def _bad(message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, message)


def prompt_ids(request: gateway_pb2.GenerateRequest, tokenizer, vocab_size: int) -> list[int]:
    """The prompt's token ids (the request's own, or its text tokenized), each within the vocabulary."""
    kind = request.WhichOneof("input")
    if kind is None:
        raise _bad("give a prompt or token_ids")
    if kind == "token_ids":
        ids = list(request.token_ids.ids)
    else:
        if not request.prompt:
            raise _bad("the prompt is empty")
        if len(request.prompt) > MAX_PROMPT_CHARS:
            raise _bad(f"the prompt is over {MAX_PROMPT_CHARS} characters")
        if tokenizer is None:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "this model has no tokenizer; send token_ids")
        ids = tokenizer.encode(request.prompt)
    if not ids:
        raise _bad("the prompt has no tokens")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise _bad(f"token ids {bad[:5]} outside [0, {vocab_size})")
    return ids


def check_limits(request: gateway_pb2.GenerateRequest, tokenizer) -> list[str]:
    """Refuses a request whose limits cannot be served; returns its stop strings."""
    if request.sampling.max_new_tokens == 0:
        raise _bad("max_new_tokens must be >= 1")
    if request.sampling.HasField("logprobs") and request.sampling.logprobs > MAX_LOGPROBS:
        raise _bad(f"logprobs must be in [0, {MAX_LOGPROBS}], got {request.sampling.logprobs}")
    for name in ("slo_ttft_s", "slo_tpot_s"):
        value = getattr(request, name)
        if not value >= 0 or value == float("inf"):  # NaN fails the first test
            raise _bad(f"{name} must be a finite number >= 0, got {value}")
    stops = [s for s in request.stop if s]
    if stops and tokenizer is None:
        raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "stop strings need a tokenizer")
    return stops


def prompt_text(request: gateway_pb2.GenerateRequest, ids: list[int], tokenizer) -> str:
    """The prompt as text, for the predictor (token ids decoded, or written out without a tokenizer)."""
    if request.WhichOneof("input") == "prompt":
        return request.prompt
    return tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids))
