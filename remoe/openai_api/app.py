"""The FastAPI app: OpenAI's /v1 endpoints over the gateway's Generate, plus /health and /metrics.

Generate is a blocking generator (it streams from the backbone over gRPC); each of its steps runs in a worker
thread, so the event loop stays free and a client that leaves cancels the backbone call at the next token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from remoe.checkpoint.files import load_config
from remoe.gateway.core import GatewayCore
from remoe.gateway.refused import Refused
from remoe.openai_api.chunks import ChunkStream, Completion, collect
from remoe.openai_api.completions import answer_completions
from remoe.openai_api.errors import APIError, from_refused
from remoe.openai_api.logprob_bodies import TokenText, chat_logprobs
from remoe.openai_api.schema import ChatCompletionRequest, CompletionRequest, SamplingRequest
from remoe.openai_api.sse import chat_events, completion_events
from remoe.openai_api.tokenizer_routes import add_tokenizer_routes
from remoe.proto import common_pb2, gateway_pb2
from remoe.server.bearer import bearer_problem
from remoe.settings import GatewaySettings, default_of

log = logging.getLogger(__name__)
CHAT_DEFAULT_MAX_TOKENS = 256  # OpenAI's chat default is "until the context ends"; a bound is kinder here
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
MAX_CHOICES = default_of(GatewaySettings, "http_max_choices")  # (prompt, choice) pairs per completion request
HEALTH_TIMEOUT_S = 2.0
DISCONNECT_POLL_S = 0.25
# For tokenizers without a chat template (base models): a plain transcript, one "Role: text" line per message.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = [str(part) for part in err.get("loc", ()) if part != "body"]
    if err.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {err.get('msg')}", None
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid request")).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


class OpenAIFrontEnd:
    """The routes' state: the gateway core, the served model's name, the optional bearer token."""

    def __init__(
        self, core: GatewayCore, model_name: str, token: str | None = None, max_choices: int = MAX_CHOICES
    ) -> None:
        self.core = core
        self.model_name = model_name
        self.token = token
        self.created = int(core.model_dir.stat().st_mtime)
        config = load_config(core.model_dir).get_text_config()
        self.context_len = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.max_choices = max_choices
        self.token_text = TokenText(core.tokenizer)
        self._limiter: anyio.CapacityLimiter | None = None

    def decode(self, token_ids: list[int]) -> str:
        tokenizer = self.core.tokenizer
        return "".join(map(self.token_text, token_ids)) if tokenizer is None else tokenizer.decode(token_ids)

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        # Every admitted request holds a worker thread while it waits for its next token; anyio's default pool
        # (40) would queue requests the gateway admitted.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.core.admission.limit + 8)
        return self._limiter

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        problem = bearer_problem(request.headers.get("authorization", ""), self.token)
        if problem is not None:
            raise APIError(401, f"{problem}: send 'Authorization: Bearer <token>'", code="invalid_api_key")

    def check_model(self, body: SamplingRequest) -> None:
        if body.model not in (self.model_name, str(self.core.model_dir)):
            raise APIError(
                404,
                f"the model `{body.model}` does not exist; this server serves `{self.model_name}`",
                param="model",
                code="model_not_found",
            )

    def generate_request(
        self,
        body: SamplingRequest,
        max_tokens: int,
        prompt=None,
        token_ids=None,
        choice: int = 0,
        logprobs: int | None = None,
        echo: bool = False,
    ):
        """The gateway request of one choice: choice j of a seeded request draws with seed + j."""
        sampling = common_pb2.SamplingParams(
            max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, echo=echo
        )
        if body.seed is not None:
            sampling.seed = (body.seed + choice) % 2**64
        if logprobs is not None:
            sampling.logprobs = logprobs
        request = gateway_pb2.GenerateRequest(sampling=sampling, stop=body.stops)
        if token_ids is not None:
            request.token_ids.ids.extend(token_ids)
        else:
            request.prompt = prompt
        return request

    def chat_token_ids(self, body: ChatCompletionRequest) -> list[int]:
        """The conversation as the model's chat template renders it, with the assistant's turn opened; a tokenizer
        without a template (a base model) gets a plain transcript ("User: ...", then "Assistant:")."""
        tokenizer = self.core.tokenizer
        if tokenizer is None:
            raise APIError(400, "this model has no tokenizer: use /v1/completions with token ids", param="messages")
        template = None if getattr(tokenizer, "chat_template", None) else PLAIN_CHAT_TEMPLATE
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            ids = tokenizer.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as e:  # a template's own raise_exception (e.g. roles must alternate) and Jinja errors
            raise APIError(400, f"the chat template refused the messages: {e}", param="messages") from None
        return list(ids)

    def stream(self, request: gateway_pb2.GenerateRequest) -> ChunkStream:
        return ChunkStream(self.core, request, self.limiter)


async def _first(stream: ChunkStream):
    """The first chunk, before any byte of a 200 is sent: a refusal or bad request becomes an error status."""
    try:
        return await stream.next()
    except Refused as e:
        stream.close()
        raise from_refused(e) from None
    except BaseException:
        stream.close()
        raise


def create_app(
    core: GatewayCore, model_name: str, token: str | None = None, registry=None, max_choices: int = MAX_CHOICES
) -> FastAPI:
    """The HTTP API over `core`. `registry`: what /metrics serves (default: the gateway's); `max_choices`: the
    (prompt, choice) pairs one completion request may ask for."""
    front = OpenAIFrontEnd(core, model_name, token, max_choices)
    registry = registry if registry is not None else core.metrics.registry
    http_requests = Counter(
        "remoe_http_requests", "HTTP API requests by route and status", ["route", "status"], registry=registry
    )
    app = FastAPI(title="Remoe", summary="OpenAI-compatible API of a Remoe gateway", docs_url="/docs", redoc_url=None)
    app.state.front = front

    app.add_middleware(RequestCounter, counter=http_requests)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("HTTP API: unexpected error")
        body = APIError(500, f"internal error: {type(exc).__name__}: {exc}").body()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    def authorized(request: Request) -> None:
        front.authorize(request)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when the gateway can reach its backbone, 503 when not (for load balancers and probes)."""

        problem = await anyio.to_thread.run_sync(core.backbone_problem, HEALTH_TIMEOUT_S, limiter=front.limiter)
        if problem is not None:
            raise APIError(503, problem)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict:
        return {"id": front.model_name, "object": "model", "created": front.created, "owned_by": "remoe"}

    add_tokenizer_routes(app, front, authorized)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}", dependencies=[Depends(authorized)])
    async def model(model: str) -> dict:
        if model != front.model_name:
            raise APIError(404, f"the model `{model}` does not exist", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, http: Request):
        front.check_model(body)
        max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETION_DEFAULT_MAX_TOKENS
        prompts = body.prompts
        if len(prompts) * body.n > front.max_choices:
            raise APIError(
                400,
                f"prompt: {len(prompts)} prompt(s) x n={body.n} is over this server's limit of {front.max_choices} "
                "choices per request (REMOE_GATEWAY_HTTP_MAX_CHOICES)",
                param="prompt",
            )
        requests = [
            front.generate_request(
                body,
                max(1, max_tokens),  # max_tokens 0 (echo): the prefill makes one token anyway, left out below
                prompt=p if isinstance(p, str) else None,
                token_ids=None if isinstance(p, str) else p,
                choice=j,
                logprobs=body.logprobs,
                echo=body.echo,
            )
            for p in prompts
            for j in range(body.n)
        ]
        if body.stream:
            return await _answer(front, body, requests[0], "text_completion", http, body.logprobs is not None)
        return JSONResponse(await answer_completions(front, body, requests, http))

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        front.check_model(body)
        ids = front.chat_token_ids(body)
        limit = body.token_limit
        if limit is None:  # the default stops at the model's context rather than run past it
            room = front.context_len - len(ids) if front.context_len else CHAT_DEFAULT_MAX_TOKENS
            limit = max(1, min(CHAT_DEFAULT_MAX_TOKENS, room))
        request = front.generate_request(body, limit, token_ids=ids, logprobs=body.logprob_alternatives)
        return await _answer(front, body, request, "chat.completion", http, body.logprobs)

    return app


class RequestCounter:
    """ASGI middleware: HTTP requests by route template (unmatched paths: "other") and status. Pure ASGI, so a
    streamed answer passes through untouched."""

    def __init__(self, app, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set in place by the router once a route matched
            self.counter.labels(getattr(route, "path", "other"), str(status[0])).inc()


async def _answer(
    front: OpenAIFrontEnd, body: SamplingRequest, request, kind: str, http: Request, logprobs: bool = False
):
    """One choice: streamed, or whole (a chat completion's)."""
    stream = front.stream(request)
    first = await _first(stream)
    created = int(time.time())
    text_of = front.token_text if logprobs else None
    if body.stream:
        events = chat_events if kind == "chat.completion" else completion_events
        return StreamingResponse(
            _sse(events(stream, first, front.model_name, created, body.include_usage, text_of)),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    try:
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(_cancel_when_gone, http, stream)
            done: Completion = await collect(stream, first)
            watchers.cancel_scope.cancel()
    except Refused as e:
        raise from_refused(e) from None
    finally:
        stream.close()
    scores = chat_logprobs(text_of, done.logprobs) if text_of is not None else None
    return JSONResponse(done.body(kind, front.model_name, created, scores))


async def _cancel_when_gone(http: Request, stream: ChunkStream) -> None:
    """A whole answer is sent only at its end: a client that hangs up before then cancels the backbone's work
    (the stream's last chunk comes at once) instead of leaving it to run for nobody."""
    while not await http.is_disconnected():
        await anyio.sleep(DISCONNECT_POLL_S)
    stream.caller.cancel()


async def _sse(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    async for event in events:
        yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
    yield "data: [DONE]\n\n"
