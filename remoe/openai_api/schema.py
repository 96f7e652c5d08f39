"""Request bodies of /v1/completions and /v1/chat/completions, checked strictly (a string where a number
belongs is an error, not a guess). Parameters that would change the answer and that Remoe does not implement
are refused by name rather than ignored. SamplingRequest.max_tokens is >= 1 except a completion's (0: with echo,
the prompt scored only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from remoe.model.logprobs import MAX_LOGPROBS

MAX_STOP_STRINGS = 4  # OpenAI's own limit
MAX_N = 16  # choices per prompt


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What both endpoints take. Unknown fields are ignored (clients send their own extras)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)  # choice j of a seeded request draws with seed + j
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    @model_validator(mode="after")
    def _unsupported(self):
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (leave them 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.stream and self.n > 1:
            raise ValueError("n > 1 is not supported with stream: send one streamed request per choice")
        return self

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingRequest):
    # Text, token ids, or a list of either: one choice (n choices) per prompt, in order.
    prompt: str | TokenIds | list[str] | list[TokenIds]
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt only
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_only(self):
        if self.echo and self.stream:
            raise ValueError("echo is not supported with stream")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 only scores the prompt: it needs echo")
        if self.best_of not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.stream and len(self.prompts) > 1:
            raise ValueError("several prompts are not supported with stream: send one streamed request per prompt")
        return self

    @field_validator("prompt")
    @classmethod
    def _prompts_not_empty(cls, value):
        many = _as_prompts(value)
        for i, prompt in enumerate(many):
            if not prompt:
                raise ValueError("the prompt is empty" if len(many) == 1 else f"prompt {i} is empty")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        return _as_prompts(self.prompt)


def _as_prompts(value) -> list:
    """A prompt field as its list of prompts: text or token ids is one, a list of either is several."""
    if isinstance(value, list) and value and isinstance(value[0], str | list):
        return list(value)
    return [value]


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict] | None = None
    response_format: dict | None = None

    @model_validator(mode="after")
    def _chat_only(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.n > 1:
            raise ValueError("n > 1 is served on /v1/completions only: send one chat request per choice")
        if self.tools:
            raise ValueError("tools are not supported")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError("only response_format type 'text' is supported")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def logprob_alternatives(self) -> int | None:
        """The backbone's logprobs parameter: None (none), else the alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
