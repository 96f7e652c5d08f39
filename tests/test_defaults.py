"""Every default is defined once: what `remoe up`, the other CLI commands, LocalCluster, the probe, the SDK and the
function platforms fall back to is what the services' settings classes say (docs/configuration.md)."""

from __future__ import annotations

import dataclasses
import inspect

from remoe import probe
from remoe.cli import build_parser
from remoe.cluster import LocalCluster
from remoe.functions.config import FunctionConfig
from remoe.platform.knative import KnativeSettings
from remoe.platform.local import LocalFunctionPlatform
from remoe.platform.plan import remote_ratio_functions
from remoe.sdk import AsyncClient, Client
from remoe.settings import SERVICES, BackboneSettings, GatewaySettings, default_of


def _field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _parameter_default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def test_remoe_up_and_local_cluster_default_to_the_settings():
    up = build_parser().parse_args(["up", "--model", "m"])
    cluster = _field_defaults(LocalCluster)
    gateway_port, http_port = default_of(GatewaySettings, "port"), default_of(GatewaySettings, "http_port")
    ttl, memory = default_of(BackboneSettings, "function_ttl_s"), default_of(BackboneSettings, "function_memory_mb")
    assert (up.port, up.http_port, up.function_ttl, up.function_memory_mb) == (gateway_port, http_port, ttl, memory)
    assert (cluster["port"], cluster["function_ttl_s"], cluster["function_memory_mb"]) == (gateway_port, ttl, memory)


def test_the_clients_find_the_gateway_on_its_default_port():
    address = f"localhost:{default_of(GatewaySettings, 'port')}"
    for command in (["generate", "hi"], ["status"]):
        assert build_parser().parse_args(command).address == address
    assert _parameter_default(Client.__init__, "target") == address
    assert _parameter_default(AsyncClient.__init__, "target") == address


def test_the_probe_and_the_function_use_each_server_s_default_port():
    for service, cls in SERVICES.items():
        assert probe.DEFAULT_PORTS[service] == default_of(cls, "port"), service
    assert _field_defaults(FunctionConfig)["port"] == probe.DEFAULT_PORTS["function"]
    assert FunctionConfig.from_env({"REMOE_MODEL_DIR": "m", "REMOE_FUNCTION_EXPERTS": "0:1"}).port == 8080


def test_the_function_platforms_default_to_the_backbone_settings():
    knative = KnativeSettings()
    assert (knative.namespace, knative.image, knative.model_pvc, knative.model_subdir) == tuple(
        default_of(BackboneSettings, f"knative_{f}") for f in ("namespace", "image", "model_pvc", "model_subdir")
    )
    ttl = default_of(BackboneSettings, "function_ttl_s")
    assert knative.idle_ttl_s == ttl and _parameter_default(LocalFunctionPlatform.__init__, "idle_ttl_s") == ttl
    memory = default_of(BackboneSettings, "function_memory_mb")
    assert {f.memory_mb for f in remote_ratio_functions([0, 1], 4, 0.5)} == {memory}
    for verb in ("knative-render", "knative-apply"):
        args = build_parser().parse_args([verb])
        assert (args.function_memory_mb, args.idle_ttl, args.namespace, args.image, args.pvc, args.model_subdir) == (
            memory,
            ttl,
            knative.namespace,
            knative.image,
            knative.model_pvc,
            knative.model_subdir,
        )
