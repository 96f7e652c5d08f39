"""One settings object per service, read from environment variables (pydantic-settings).

Every field of a service's settings is the environment variable `REMOE_<SERVICE>_<FIELD>` (e.g.
`REMOE_GATEWAY_BACKBONE`) and the flag `--<field>` (flags win over the environment). docker-compose, the
Kubernetes manifests and `remoe up` configure the services by these same variables; `docs/configuration.md`
lists them all (generated from these classes by `python -m remoe.settings`, checked by the tests). Tracing
uses OpenTelemetry's own variables (`OTEL_TRACES_EXPORTER=otlp`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from remoe.constants import FUNCTION_IMAGE, GUEST_IDLE_S, MIN_FUNCTION_MEMORY_MB, MODEL_VOLUME
from remoe.ports import DEFAULT_HTTP_PORT, DEFAULT_PORTS


class ServerSettings(BaseSettings):
    """What every gRPC server takes."""

    # An empty variable (compose's `${VAR:-}`) means unset.
    model_config = SettingsConfigDict(env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="address to bind (127.0.0.1: this machine only; 0.0.0.0 in a container)")
    port: int = Field(0, ge=0, le=65535, description="port to serve on (0: any free port)")
    workers: int = Field(16, ge=1, description="concurrent RPCs and streams")
    ready_file: Path | None = Field(None, description="write the bound port to this file once serving")
    verbose: bool = Field(False, description="log at DEBUG level")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics at http://HOST:PORT/metrics (unset: none)"
    )


class GatewaySettings(ServerSettings):
    """The gateway: the SDK's entry point; tokenizes, plans each request, streams from the backbone."""

    model_config = SettingsConfigDict(env_prefix="REMOE_GATEWAY_")
    port: int = Field(DEFAULT_PORTS["gateway"], ge=0, le=65535, description="port to serve on (0: any free port)")
    model: Path = Field(description="checkpoint or split directory (the tokenizer is read from it)")
    backbone: str = Field(description="backbone service address, HOST:PORT")
    predictor: str | None = Field(None, description="predictor service address (unset: no forecasts)")
    scheduler: str | None = Field(None, description="scheduler service address (unset: the backbone's placement)")
    ledger_redis_url: str | None = Field(None, description="Redis for the metering ledger (unset: no metering)")
    prior_redis_url: str | None = Field(
        None, description="the predictor's Redis: plans use its global prior while the predictor is down"
    )
    slo_ttft_ms: float = Field(0.0, ge=0, description="default TTFT SLO of plans, ms (0: none)")
    slo_tpot_ms: float = Field(0.0, ge=0, description="default TPOT SLO of plans, ms (0: none)")
    prewarm: bool = Field(True, description="warm the plan's functions when a request arrives")
    warm_aware_plans: bool = Field(
        True,
        description="plans know which functions run: they price a new function's start and keep-alive and reuse "
        "running ones where that is cheaper (off: the paper's plans, as if starts cost nothing)",
    )
    max_requests: int = Field(
        64, ge=1, description="requests served at once; more are refused at once (RESOURCE_EXHAUSTED, retry hint)"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    auth_token: str | None = Field(
        None,
        repr=False,
        description="require 'authorization: Bearer <token>' on every GatewayService call and /v1 HTTP request",
    )
    http_port: int = Field(
        DEFAULT_HTTP_PORT,
        ge=0,
        le=65535,
        description="port of the OpenAI-compatible HTTP API and /metrics (0: any free port)",
    )
    http: bool = Field(True, description="serve the HTTP API (/v1/completions, /v1/chat/completions, /metrics)")
    http_max_choices: int = Field(
        32, ge=1, description="(prompt, choice) pairs one /v1/completions request may ask for (prompts x n)"
    )
    served_model_name: str | None = Field(
        None, description="the model's name in the HTTP API (unset: the model directory's name)"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self


class BackboneSettings(ServerSettings):
    """The backbone: the model without its routed experts; sends expert work to services and functions."""

    model_config = SettingsConfigDict(env_prefix="REMOE_BACKBONE_")
    port: int = Field(DEFAULT_PORTS["backbone"], ge=0, le=65535, description="port to serve on (0: any free port)")
    workers: int = Field(
        72,
        ge=1,
        description="concurrent RPCs and streams: each request in flight holds one (the gateway admits 64 at "
        "once), status and warm calls one each; beyond it requests queue in gRPC, outside the batch",
    )
    model: Path = Field(description="checkpoint or split directory")
    experts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="expert service addresses, comma-separated (experts spread round-robin; unset: all in-process)",
    )
    remote_ratio: float = Field(0.0, ge=0, le=1, description="share of each layer's experts in functions")
    plan: Path | None = Field(None, description="a plan file (JSON) naming the functions instead")
    function_memory_mb: int = Field(1024, ge=MIN_FUNCTION_MEMORY_MB, description="memory size of each function")
    function_ttl_s: float = Field(60.0, gt=0, description="idle seconds before a function scales to zero")
    function_platform: Literal["local", "knative"] = Field(
        "local", description="where functions run: local processes, or Knative Services in a cluster"
    )
    expert_transport: Literal["auto", "grpc"] = Field(
        "auto",
        description="how batches reach expert services: auto uses a service's co-located data plane (the same "
        "messages over a unix socket it advertises) when it runs on this host, gRPC otherwise; grpc always "
        "uses gRPC",
    )
    function_runtime: Literal["fork", "process"] = Field(
        "fork",
        description="local platform: fork each function instance from a pre-imported runtime template, or "
        "start it as a fresh process (imports included, as a bare serverless platform would)",
    )
    function_warm_at_start: bool = Field(
        True,
        description="start the deployed functions (--remote-ratio, --plan) while the backbone loads the model, so "
        "their cold starts overlap its own (the paper's overlapped cold start)",
    )
    function_cold_start: Literal["fallback", "wait"] = Field(
        "fallback",
        description="while a function has no instance serving: compute its batches on an expert service "
        "(fallback) or wait for its cold start (wait)",
    )
    run_dir: Path | None = Field(None, description="local platform: where function instances keep logs (temp)")
    function_memory_budget_mb: int | None = Field(
        None,
        ge=MIN_FUNCTION_MEMORY_MB,
        description="local platform: total size of running instances (unset: half the machine)",
    )
    function_max_starting: int | None = Field(
        None,
        ge=1,
        description="local platform: instances requests' plans may have starting at once; more wait for a later "
        "batch while an expert service computes theirs (unset: half the cores, at least 1)",
    )
    knative_namespace: str = Field("remoe", description="knative platform: namespace of the functions")
    knative_image: str = Field(FUNCTION_IMAGE, description="knative platform: the function image")
    knative_model_pvc: str = Field(MODEL_VOLUME, description="knative platform: PVC that holds the model")
    knative_model_subdir: str = Field("model", description="knative platform: the model's directory in the PVC")
    knative_template: Path | None = Field(
        None, description="knative platform: a Knative Service YAML every function is rendered from"
    )
    device: str | None = Field(None, description="torch device (unset: cuda when there is one, else cpu)")
    dtype: str = Field("auto", description="compute dtype (auto: the checkpoint's own)")
    max_new_tokens: int = Field(4096, ge=1, description="largest max_new_tokens accepted")
    batching: Literal["on", "off"] = Field(
        "on",
        description="continuous batching: concurrent requests share each decode step's forward and its expert "
        "fan-out (off: one forward per request per token, each request on its own thread)",
    )
    max_batch_requests: int = Field(32, ge=1, description="batching: requests in the running batch at once")
    prefill_chunk: int = Field(
        256, ge=1, description="batching: prompt tokens prefilled per step (longer prompts are split)"
    )

    @field_validator("experts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("experts")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        out = []
        for text in value:
            address = text.rpartition("@")[0] or text  # the older ADDRESS@INDEX/COUNT form: shard part ignored
            if ":" not in address:
                raise ValueError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:50061")
            out.append(address)
        return out


class ExpertSettings(ServerSettings):
    """An expert service: computes routed experts on CPU for the backbone."""

    model_config = SettingsConfigDict(env_prefix="REMOE_EXPERT_")
    port: int = Field(DEFAULT_PORTS["expert"], ge=0, le=65535, description="port to serve on (0: any free port)")
    workers: int = Field(64, ge=1, description="concurrent RPCs and streams (one per backbone request thread)")
    model: Path = Field(description="checkpoint or split directory")
    budget_bytes: int | None = Field(None, ge=0, description="expert bytes kept loaded (unset: all)")
    guest_idle_s: float = Field(
        GUEST_IDLE_S,
        gt=0,
        description="experts loaded for another destination's batches (a function still starting, a failed "
        "service) are dropped after this many seconds unused",
    )
    dtype: str = Field("auto", description="compute dtype (auto: the checkpoint's own)")
    kernel: Literal["auto", "native", "aten", "onednn", "class"] = Field(
        "auto",
        description="expert kernel (auto: native where it builds and covers the layer, else aten; class: the "
        "architecture's own experts class); `remoe inspect` shows each layer's",
    )
    local_plane: bool = Field(
        True,
        description="serve Compute on a unix socket too (advertised in Stats), for backbones on the same host: "
        "~30 µs a round trip instead of gRPC's ~0.4 ms",
    )
    name: str = Field("expert", description="name in status output")


class PredictorSettings(ServerSettings):
    """The predictor: forecasts a prompt's expert use from similar past prompts (SPS over Qdrant)."""

    model_config = SettingsConfigDict(env_prefix="REMOE_PREDICTOR_")
    port: int = Field(DEFAULT_PORTS["predictor"], ge=0, le=65535, description="port to serve on (0: any free port)")
    model: Path = Field(description="checkpoint or split directory")
    qdrant_path: Path | None = Field(None, description="embedded Qdrant directory (one process per path)")
    qdrant_url: str | None = Field(None, description="a Qdrant server instead, e.g. http://qdrant:6333")
    redis_url: str | None = Field(None, description="Redis for the global prior (unset: none)")


class SchedulerSettings(ServerSettings):
    """The scheduler: turns a forecast into the cheapest plan that meets the SLOs."""

    model_config = SettingsConfigDict(env_prefix="REMOE_SCHEDULER_")
    port: int = Field(DEFAULT_PORTS["scheduler"], ge=0, le=65535, description="port to serve on (0: any free port)")
    model: Path = Field(description="checkpoint or split directory")
    profile: Path | None = Field(None, description="`remoe profile` JSON (unset: placeholder speeds)")
    redis_url: str | None = Field(None, description="Redis for the plan cache (unset: this process only)")
    cpu_price: float | None = Field(None, gt=0, description="$ per GB-s of CPU memory (unset: AWS Lambda's)")
    gpu_price: float | None = Field(None, gt=0, description="$ per GB-s of GPU memory (unset: Cloud Run L4's)")
    price_evictions: bool = Field(
        True,
        description="warm-aware plans price the restarts of the running functions their new ones push out of the "
        "platform's memory budget (off: each plan fits the budget on its own, as if nothing else ran)",
    )


S = TypeVar("S", bound=BaseSettings)

SERVICES: dict[str, type[ServerSettings]] = {
    "gateway": GatewaySettings,
    "backbone": BackboneSettings,
    "expert": ExpertSettings,
    "predictor": PredictorSettings,
    "scheduler": SchedulerSettings,
}


def default_of(cls: type[BaseSettings], field: str) -> Any:
    """A setting's default: where the CLI, LocalCluster and the platforms take theirs from."""
    return cls.model_fields[field].get_default(call_default_factory=True)


def env_prefix(cls: type[BaseSettings]) -> str:
    return cls.model_config["env_prefix"]


def env_name(cls: type[BaseSettings], field: str) -> str:
    return f"{env_prefix(cls)}{field}".upper()


def _format(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def env_for(cls: type[BaseSettings], **values: Any) -> dict[str, str]:
    """Environment variables that configure a service with `values` (None: left unset). Unknown names fail."""
    unknown = values.keys() - cls.model_fields.keys()
    if unknown:
        raise KeyError(f"{cls.__name__} has no setting {', '.join(sorted(unknown))}")
    return {env_name(cls, k): _format(v) for k, v in values.items() if v is not None}


def _scalar_type(annotation: Any) -> Any:
    """The type argparse converts a flag with: int/float/str; Optional and Path become their inner type."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return annotation if annotation in (int, float) else str


# Older flag spellings that still work.
FLAG_ALIASES = {"experts": ["--expert"], "function_ttl_s": ["--function-ttl"]}


def parser_for(cls: type[BaseSettings], prog: str, description: str) -> argparse.ArgumentParser:
    """Flags for every field; each help line names its environment variable and default."""
    epilog = f"Every flag can be set by environment instead: {env_prefix(cls)}<FLAG> (upper case, '_' for '-')."
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    for name, info in cls.model_fields.items():
        flags = ["--" + name.replace("_", "-"), *FLAG_ALIASES.get(name, [])]
        required = info.is_required()
        default = "required" if required else f"default {_format(info.get_default(call_default_factory=True))}"
        help_text = f"{info.description} [{env_name(cls, name)}; {default}]"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": name}
        if info.annotation is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            if name == "verbose":
                parser.add_argument("-v", action="store_true", dest=name, default=argparse.SUPPRESS, help="--verbose")
        elif get_origin(info.annotation) is list:
            parser.add_argument(*flags, action="append", metavar="ADDRESS", **kwargs)
        else:
            parser.add_argument(*flags, type=_scalar_type(info.annotation), metavar=name.upper(), **kwargs)
    return parser


def load_settings(cls: type[S], argv: list[str] | None, prog: str, description: str) -> S:
    """Settings from the environment, overridden by flags; a bad or missing value exits with a message that
    names both the flag and the variable."""
    parser = parser_for(cls, prog, description)
    given = vars(parser.parse_args(argv))
    try:
        return cls(**given)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            where = f"--{field.replace('_', '-')} / {env_name(cls, field)}" if field else cls.__name__
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        parser.error("; ".join(problems))


def reference_markdown() -> str:
    """docs/configuration.md: every service's variables, flags, defaults and meaning."""
    lines = [
        "# Configuration",
        "",
        "Generated by `python -m remoe.settings` from `remoe/settings.py`; the tests check it is current.",
        "",
        "Each service reads its settings from environment variables `REMOE_<SERVICE>_<FIELD>`; a flag",
        "`--<field>` overrides its variable. docker-compose (`docker-compose.yml`), Kubernetes (`k8s/`) and",
        "`remoe up` configure the services by these same names. Tracing takes OpenTelemetry's standard variables",
        "(`OTEL_TRACES_EXPORTER=otlp|console|none`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`). The",
        "expert function (Knative or local) is configured by the platform that starts it: see",
        "`python -m remoe.functions.expert --help`.",
        "",
    ]
    for service, cls in SERVICES.items():
        lines += [
            f"## {service} (`python -m remoe.services.{service}`, prefix `{env_prefix(cls)}`)",
            "",
            cls.__doc__ or "",
            "",
            "| variable | flag | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, info in cls.model_fields.items():
            default = (
                "*required*" if info.is_required() else f"`{_format(info.get_default(call_default_factory=True))}`"
            )
            flag = "--" + name.replace("_", "-")
            lines.append(f"| `{env_name(cls, name)}` | `{flag}` | {default} | {info.description} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
