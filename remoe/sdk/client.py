"""gRPC client SDK for the Remoe gateway: `Client` (blocking) and `AsyncClient` (asyncio).

from remoe.sdk import Client
result = Client("localhost:50051").generate(prompt="Hello", max_new_tokens=16)
result.token_ids, result.text, result.usage.ttft_s
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from remoe.ports import DEFAULT_PORTS
from remoe.proto import common_pb2, gateway_pb2, gateway_pb2_grpc
from remoe.sdk.errors import from_rpc_error
from remoe.sdk.scores import Score, TokenLogprob
from remoe.transport.channel import CLIENT_CHANNEL_OPTIONS


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    moe_layers: list[int] = field(default_factory=list)
    prefill_activations: np.ndarray | None = None  # [layers, experts] tokens routed during prefill
    decode_activations: np.ndarray | None = None  # [layers, experts] during decode
    plan: str = ""  # JSON: which destination hosted which experts
    forecast_source: str = ""  # the predictor's forecast: "sps", "prior", "equal" ("" when none was made)
    forecast_js: float = 0.0  # its mean JS divergence from the actual prefill activation
    function_seconds: dict[str, float] = field(default_factory=dict)  # function -> handler seconds it billed
    function_memory_mb: dict[str, int] = field(default_factory=dict)  # function -> its memory size
    function_calls: dict[str, float] = field(default_factory=dict)  # function -> invocations (its share of each)
    # function -> its batches' round trips as the backbone saw them (the billed seconds plus transport and waits)
    function_round_trip_seconds: dict[str, float] = field(default_factory=dict)
    expert_format: str = ""  # "" when the experts are exact; else how a quantized split stores them
    predict_s: float = 0.0  # the gateway's forecast before the backbone started (ttft_s leaves it out)
    plan_s: float = 0.0  # the gateway's plan from the scheduler, likewise

    @classmethod
    def from_proto(cls, msg: common_pb2.Usage) -> Usage:
        act = msg.activations
        shape = (len(act.moe_layers), act.num_experts)
        return cls(
            prompt_tokens=msg.prompt_tokens,
            completion_tokens=msg.completion_tokens,
            ttft_s=msg.ttft_s,
            tpot_s=msg.tpot_s,
            moe_layers=list(act.moe_layers),
            prefill_activations=np.array(act.prefill, dtype=np.int64).reshape(shape) if act.prefill else None,
            decode_activations=np.array(act.decode, dtype=np.int64).reshape(shape) if act.decode else None,
            plan=msg.plan,
            forecast_source=msg.forecast_source,
            forecast_js=msg.forecast_js,
            function_seconds=dict(msg.function_seconds),
            function_memory_mb=dict(msg.function_memory_mb),
            function_calls=dict(msg.function_calls),
            function_round_trip_seconds=dict(msg.function_round_trip_seconds),
            expert_format=msg.expert_format,
            predict_s=msg.predict_s,
            plan_s=msg.plan_s,
        )


@dataclass(slots=True)
class Chunk:
    token_ids: list[int]
    text: str
    finish_reason: str = ""
    usage: Usage | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with logprobs=N: one per token id
    prompt_token_ids: list[int] = field(default_factory=list)  # with echo=True, on the first chunk
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # prompt tokens 2..T's (echo, first chunk)


@dataclass(slots=True)
class Result:
    token_ids: list[int]
    text: str
    finish_reason: str
    usage: Usage
    request_id: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with logprobs=N: one per generated token
    prompt_token_ids: list[int] = field(default_factory=list)  # with echo=True
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # with echo=True: prompt tokens 2..T's
    # As this client saw them: the call to the first token (the gateway's predict and plan included, unlike
    # usage.ttft_s), and the mean gap between the tokens after it.
    client_ttft_s: float = 0.0
    client_tpot_s: float = 0.0


def build_request(
    prompt: str | None = None,
    token_ids: list[int] | None = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    ignore_eos: bool = False,
    request_id: str = "",
    slo_ttft_s: float = 0.0,
    slo_tpot_s: float = 0.0,
    logprobs: int | None = None,
    echo: bool = False,
) -> gateway_pb2.GenerateRequest:
    """The GenerateRequest for these options (the keyword arguments of Client.generate/stream). The SLOs (0 = the
    cluster's default) are what the scheduler plans this request for. `logprobs=N` (0-20): each generated token's
    log-probability and its N most likely alternatives; `echo`: the prompt tokens' too."""
    if (prompt is None) == (token_ids is None):
        raise ValueError("pass exactly one of prompt and token_ids")
    sampling = common_pb2.SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, ignore_eos=ignore_eos
    )
    if seed is not None:
        sampling.seed = seed
    if logprobs is not None:
        sampling.logprobs = logprobs
    sampling.echo = echo
    request = gateway_pb2.GenerateRequest(
        sampling=sampling, stop=stop or [], request_id=request_id, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s
    )
    if prompt is not None:
        request.prompt = prompt
    else:
        request.token_ids.ids.extend(int(t) for t in token_ids)
    return request


def _chunk(msg: gateway_pb2.GenerateChunk) -> Chunk:
    usage = Usage.from_proto(msg.usage) if msg.HasField("usage") else None
    return Chunk(
        list(msg.token_ids),
        msg.text_delta,
        msg.finish_reason,
        usage,
        [TokenLogprob.from_proto(m) for m in msg.logprobs],
        list(msg.prompt_token_ids),
        [TokenLogprob.from_proto(m) for m in msg.prompt_logprobs],
    )


def _timed(chunks: Iterator[Chunk]) -> Iterator[tuple[float, Chunk]]:
    for chunk in chunks:
        yield time.perf_counter(), chunk


def _collect(timed: Iterator[tuple[float, Chunk]], start: float, request_id: str = "") -> Result:
    """The chunks, each with when it arrived, as one Result; `start` is when the call was made."""
    result = Result([], "", "", Usage(), request_id)
    text = []
    first = last = None
    for arrived, chunk in timed:
        if chunk.token_ids:
            first = arrived if first is None else first
            last = arrived
        result.token_ids += chunk.token_ids
        result.logprobs += chunk.logprobs
        result.prompt_token_ids += chunk.prompt_token_ids
        result.prompt_logprobs += chunk.prompt_logprobs
        text.append(chunk.text)
        result.finish_reason = chunk.finish_reason or result.finish_reason
        result.usage = chunk.usage or result.usage
    result.text = "".join(text)
    if first is not None:
        result.client_ttft_s = first - start
        result.client_tpot_s = (last - first) / (len(result.token_ids) - 1) if len(result.token_ids) > 1 else 0.0
    return result


def _score_options(options: dict) -> dict:
    """Client.score's generate options: the prompt's own log-probabilities, one token made (and dropped)."""
    unknown = set(options) - {"logprobs", "request_id", "timeout"}
    if unknown:
        raise TypeError(f"score() takes logprobs, request_id and timeout, not {sorted(unknown)}")
    return {"logprobs": 0, **options, "echo": True, "max_new_tokens": 1, "ignore_eos": True}


@dataclass(frozen=True)
class Connection:
    """How to reach a gateway: its address, TLS (with the system's CA roots, or `root_certificates`, a PEM file)
    and the bearer token a gateway with REMOE_GATEWAY_AUTH_TOKEN asks for."""

    target: str
    token: str | None = None
    tls: bool = False
    root_certificates: Path | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls or self.root_certificates):
            return None
        roots = Path(self.root_certificates).read_bytes() if self.root_certificates else None
        return grpc.ssl_channel_credentials(root_certificates=roots)

    def channel(self, aio: bool = False):
        module = grpc.aio if aio else grpc
        credentials = self.credentials()
        if credentials is None:
            return module.insecure_channel(self.target, options=CLIENT_CHANNEL_OPTIONS)
        return module.secure_channel(self.target, credentials, options=CLIENT_CHANNEL_OPTIONS)


class Client:
    """Blocking client. `timeout` is each call's deadline in seconds (None = no deadline). `token`, `tls` and
    `root_certificates` reach a gateway that serves TLS or asks for a bearer token (see Connection)."""

    def __init__(
        self,
        target: str = f"localhost:{DEFAULT_PORTS['gateway']}",
        timeout: float | None = 300.0,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: str | Path | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._connection = Connection(target, token, tls, Path(root_certificates) if root_certificates else None)
        self._channel = self._connection.channel()
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    def stream(
        self, prompt: str | None = None, token_ids: list[int] | None = None, timeout: float | None = None, **options
    ) -> Iterator[Chunk]:
        """Yield chunks as tokens are made. Options are build_request's keywords: max_new_tokens, temperature,
        top_p, seed, stop, ignore_eos, request_id. `timeout` overrides the client's deadline for this call."""
        request = build_request(prompt, token_ids, **options)
        call = self._stub.Generate(
            request, timeout=timeout if timeout is not None else self.timeout, metadata=self._connection.metadata
        )
        try:
            for msg in call:
                yield _chunk(msg)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()  # a consumer that stops early releases the server's work

    def generate(self, prompt: str | None = None, token_ids: list[int] | None = None, **kwargs) -> Result:
        start = time.perf_counter()  # the stream makes its call on the first next()
        chunks = self.stream(prompt=prompt, token_ids=token_ids, **kwargs)
        return _collect(_timed(chunks), start, kwargs.get("request_id", ""))

    def score(self, prompt: str | None = None, token_ids: list[int] | None = None, **options) -> Score:
        """The log-probability of every prompt token from the second on (`logprobs=N` adds N alternatives each):
        one prefill on the backbone. `score(token_ids=context + continuation).total(len(context))` is the
        continuation's log-likelihood."""
        result = self.generate(prompt=prompt, token_ids=token_ids, **_score_options(options))
        return Score(result.prompt_token_ids, result.prompt_logprobs)

    def status(self, timeout: float = 10.0) -> gateway_pb2.StatusReply:
        try:
            return self._stub.Status(gateway_pb2.StatusRequest(), timeout=timeout, metadata=self._connection.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same methods as Client (`await generate(...)`, `async for chunk in stream(...)`)."""

    def __init__(
        self,
        target: str = f"localhost:{DEFAULT_PORTS['gateway']}",
        timeout: float | None = 300.0,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: str | Path | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._connection = Connection(target, token, tls, Path(root_certificates) if root_certificates else None)
        self._channel = self._connection.channel(aio=True)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    async def stream(
        self, prompt: str | None = None, token_ids: list[int] | None = None, timeout: float | None = None, **options
    ) -> AsyncIterator[Chunk]:
        request = build_request(prompt, token_ids, **options)
        call = self._stub.Generate(
            request, timeout=timeout if timeout is not None else self.timeout, metadata=self._connection.metadata
        )
        try:
            async for msg in call:
                yield _chunk(msg)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    async def generate(self, prompt: str | None = None, token_ids: list[int] | None = None, **kwargs) -> Result:
        start = time.perf_counter()
        timed = [(time.perf_counter(), c) async for c in self.stream(prompt=prompt, token_ids=token_ids, **kwargs)]
        return _collect(iter(timed), start, kwargs.get("request_id", ""))

    async def score(self, prompt: str | None = None, token_ids: list[int] | None = None, **options) -> Score:
        result = await self.generate(prompt=prompt, token_ids=token_ids, **_score_options(options))
        return Score(result.prompt_token_ids, result.prompt_logprobs)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
