"""gRPC client SDK for the Remoe gateway: `Client` (blocking) and `AsyncClient` (asyncio).

from remoe.sdk import Client
result = Client("localhost:50051").generate(prompt="Hello", max_new_tokens=16)
result.token_ids, result.text, result.usage.ttft_s
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from remoe.ports import DEFAULT_PORTS
from remoe.proto import common_pb2, gateway_pb2, gateway_pb2_grpc
from remoe.sdk.errors import from_rpc_error
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
    function_seconds: dict[str, float] = field(default_factory=dict)  # function -> instance-seconds it billed
    function_memory_mb: dict[str, int] = field(default_factory=dict)  # function -> its memory size

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
        )


@dataclass(slots=True)
class Chunk:
    token_ids: list[int]
    text: str
    finish_reason: str = ""
    usage: Usage | None = None


@dataclass(slots=True)
class Result:
    token_ids: list[int]
    text: str
    finish_reason: str
    usage: Usage
    request_id: str = ""


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
) -> gateway_pb2.GenerateRequest:
    """The GenerateRequest for these options (the keyword arguments of Client.generate/stream). The SLOs (0 = the
    cluster's default) are what the scheduler plans this request for."""
    if (prompt is None) == (token_ids is None):
        raise ValueError("pass exactly one of prompt and token_ids")
    sampling = common_pb2.SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, ignore_eos=ignore_eos
    )
    if seed is not None:
        sampling.seed = seed
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
    return Chunk(list(msg.token_ids), msg.text_delta, msg.finish_reason, usage)


def _collect(chunks, request_id: str = "") -> Result:
    ids, text, finish, usage = [], [], "", None
    for chunk in chunks:
        ids += chunk.token_ids
        text.append(chunk.text)
        finish = chunk.finish_reason or finish
        usage = chunk.usage or usage
    return Result(ids, "".join(text), finish, usage or Usage(), request_id)


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
        return _collect(self.stream(prompt=prompt, token_ids=token_ids, **kwargs), kwargs.get("request_id", ""))

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
        chunks = [c async for c in self.stream(prompt=prompt, token_ids=token_ids, **kwargs)]
        return _collect(chunks, kwargs.get("request_id", ""))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
