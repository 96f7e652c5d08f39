"""/tokenize, /detokenize and /tokenizer_info as vLLM serves them (evaluation harnesses and clients that count
tokens ask for them): the served model's own tokenizer, so ids round-trip with /v1/completions."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from remoe.openai_api.errors import APIError
from remoe.openai_api.schema import ChatMessage

MAX_TOKENIZE_CHARS = 1_000_000


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    prompt: str | None = Field(None, max_length=MAX_TOKENIZE_CHARS)
    messages: list[ChatMessage] | None = None  # a conversation as /v1/chat/completions renders it (its turn open)
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    tokens: list[int] = Field(max_length=MAX_TOKENIZE_CHARS)


def add_tokenizer_routes(app: FastAPI, front, authorized) -> None:
    def tokenizer():
        if front.core.tokenizer is None:
            raise APIError(400, "this model has no tokenizer: it takes token ids only")
        return front.core.tokenizer

    def check_model(model: str | None) -> None:
        if model is not None and model not in (front.model_name, str(front.core.model_dir)):
            raise APIError(404, f"the model `{model}` does not exist", param="model", code="model_not_found")

    @app.post("/tokenize", dependencies=[Depends(authorized)])
    async def tokenize(body: TokenizeRequest) -> dict:
        check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give prompt or messages (one of them)", param="prompt")
        if body.messages is not None:
            if not body.messages:
                raise APIError(400, "messages is empty", param="messages")
            ids = front.chat_token_ids(body)
        else:
            ids = list(tokenizer().encode(body.prompt, add_special_tokens=body.add_special_tokens))
        return {"count": len(ids), "max_model_len": front.context_len, "tokens": ids, "token_strs": None}

    @app.post("/detokenize", dependencies=[Depends(authorized)])
    async def detokenize(body: DetokenizeRequest) -> dict:
        check_model(body.model)
        vocab = front.core.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"tokens {bad[:5]} are outside the vocabulary [0, {vocab})", param="tokens")
        return {"prompt": tokenizer().decode(body.tokens)}

    @app.get("/tokenizer_info", dependencies=[Depends(authorized)])
    async def tokenizer_info() -> dict:
        tok = tokenizer()
        return {
            "tokenizer_class": type(tok).__name__,
            "vocab_size": front.core.vocab_size,
            "model_max_length": front.context_len,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "pad_token": tok.pad_token,
            "unk_token": tok.unk_token,
            "chat_template": getattr(tok, "chat_template", None),
            "add_bos_token": getattr(tok, "add_bos_token", None),
        }
