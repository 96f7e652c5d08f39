"""The Knative function platform: one `serving.knative.dev/v1` Service per remote-expert function.

Rendering is a pure function (`render_service`), validated in the tests against Knative's own CRD schema.
`KnativeFunctionPlatform` applies, updates and deletes the Services through the official `kubernetes`
client. Knative scales each Service between 0 and `replicas` instances; a request to a Service at zero
cold-starts it, which is how `warm` pre-warms.

Cluster prerequisites (see docs/knative.md): Knative Serving with the PVC volume feature enabled
(`kubernetes.podspec-persistent-volume-claim: enabled` in config-features), and a PVC with the model.
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from remoe.constants import FUNCTION_IMAGE, MEMORY_MB_PER_VCPU, MODEL_VOLUME, FunctionEnv
from remoe.errors import RemoeError
from remoe.functions.config import format_experts
from remoe.platform.base import FunctionSpec, InstanceStatus
from remoe.ports import DEFAULT_PORTS
from remoe.settings import BackboneSettings, default_of

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
PART_OF = "app.kubernetes.io/part-of"
FUNCTION_LABEL = "remoe.dev/function"
MODEL_MOUNT = "/models"
VISIBILITY = "networking.knative.dev/visibility"
H2C_PORT = DEFAULT_PORTS["function"]


@dataclass(frozen=True, slots=True)
class KnativeSettings:
    # Defaults: the backbone's settings (REMOE_BACKBONE_KNATIVE_*, REMOE_BACKBONE_FUNCTION_TTL_S).
    namespace: str = default_of(BackboneSettings, "knative_namespace")
    image: str = default_of(BackboneSettings, "knative_image")
    model_pvc: str = default_of(BackboneSettings, "knative_model_pvc")
    model_subdir: str = default_of(BackboneSettings, "knative_model_subdir")  # the model directory in the volume
    idle_ttl_s: int = int(default_of(BackboneSettings, "function_ttl_s"))  # kept warm this long, then scaled to zero
    prefix: str = "remoe-"
    # A Knative Service every function starts from (k8s/base/function-template.yaml, mounted into the backbone):
    # operators add node selectors, tolerations or pull policies there; None = default_template().
    template: dict[str, Any] | None = field(default=None, compare=False)

    def service_name(self, function: str) -> str:
        return f"{self.prefix}{function}"


class KnativeConfigError(RemoeError):
    """The Knative platform cannot reach a cluster."""


def address_of_url(url: str) -> str:
    """HOST:PORT to dial for a Knative URL (http://name.ns.svc.cluster.local -> port 80; h2c, no TLS)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 80}"


def default_template() -> dict[str, Any]:
    """What every function's Service shares: scale from zero, cluster-local only, h2c, non-root, model read-only."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Service",
        "metadata": {
            "name": "remoe-function-template",
            "labels": {PART_OF: "remoe", VISIBILITY: "cluster-local"},
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {PART_OF: "remoe"},
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": "0",
                        "autoscaling.knative.dev/initial-scale": "0",
                    },
                },
                "spec": {
                    "containerConcurrency": 0,
                    "timeoutSeconds": 300,
                    "containers": [
                        {
                            "name": "expert-function",
                            "image": FUNCTION_IMAGE,
                            "ports": [{"name": "h2c", "containerPort": H2C_PORT}],
                            "env": [
                                {"name": FunctionEnv.HOST, "value": "0.0.0.0"}
                            ],  # Knative's queue-proxy is the way in
                            "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}],
                            # Ready when its gRPC health service says SERVING (set once it can compute). No period:
                            # Knative's queue-proxy then probes aggressively (every few ms) until the first success,
                            # where a kubelet startupProbe would check once a second and delay each cold start.
                            "readinessProbe": {"grpc": {"port": H2C_PORT}, "failureThreshold": 3},
                            "securityContext": {
                                "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "volumes": [
                        {"name": "model", "persistentVolumeClaim": {"claimName": MODEL_VOLUME, "readOnly": True}}
                    ],
                },
            }
        },
    }


def load_template(path: str | Path) -> dict[str, Any]:
    """A Knative Service YAML to render functions from; it must have one container and a volume named model."""
    with open(path) as f:
        template = yaml.safe_load(f)
    try:
        if template["apiVersion"] != f"{GROUP}/{VERSION}" or template["kind"] != "Service":
            raise ValueError(f"is a {template['apiVersion']} {template['kind']}, not a {GROUP}/{VERSION} Service")
        pod = template["spec"]["template"]["spec"]
        if len(pod["containers"]) != 1:
            raise ValueError("needs exactly one container")
        if not any(v.get("name") == "model" for v in pod.get("volumes", [])):
            raise ValueError("needs a volume named 'model' (the model PVC)")
    except (KeyError, TypeError) as e:
        raise ValueError(f"function template {path}: missing {e}") from None
    except ValueError as e:
        raise ValueError(f"function template {path}: {e}") from None
    return template


def render_service(spec: FunctionSpec, settings: KnativeSettings) -> dict[str, Any]:
    """The Knative Service manifest for one function (a plain dict, ready for YAML or the API)."""
    body = copy.deepcopy(settings.template or default_template())
    name = settings.service_name(spec.name)
    cpu_millis = max(100, spec.memory_mb * 1000 // MEMORY_MB_PER_VCPU)  # memory buys vCPUs, as in the paper
    env = {
        FunctionEnv.MODEL_DIR: f"{MODEL_MOUNT}/{settings.model_subdir}",
        FunctionEnv.EXPERTS: format_experts(list(spec.experts)),
        FunctionEnv.NAME: spec.name,
        FunctionEnv.MEMORY_BYTES: str(spec.memory_mb * 2**20),
    }
    meta = body.setdefault("metadata", {})
    meta.update(name=name, namespace=settings.namespace)
    meta.setdefault("labels", {}).update({PART_OF: "remoe", FUNCTION_LABEL: spec.name})
    revision = body["spec"]["template"]
    revision.setdefault("metadata", {}).setdefault("labels", {}).update({PART_OF: "remoe", FUNCTION_LABEL: spec.name})
    revision["metadata"].setdefault("annotations", {}).update(
        {
            "autoscaling.knative.dev/max-scale": str(spec.replicas),
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period": f"{settings.idle_ttl_s}s",
        }
    )
    pod = revision["spec"]
    pod["containerConcurrency"] = spec.concurrency
    container = pod["containers"][0]
    container["image"] = settings.image
    kept = [e for e in container.get("env", []) if e["name"] not in env]
    container["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
    container["resources"] = {
        "requests": {"memory": f"{spec.memory_mb}Mi", "cpu": f"{cpu_millis}m"},
        "limits": {"memory": f"{spec.memory_mb}Mi", "cpu": f"{cpu_millis}m"},
    }
    for volume in pod["volumes"]:
        if volume["name"] == "model":
            volume["persistentVolumeClaim"] = {"claimName": settings.model_pvc, "readOnly": True}
    return body


class KnativeFunctionPlatform:
    """Applies a plan's functions as Knative Services in one namespace (kubernetes CustomObjectsApi)."""

    def __init__(self, settings: KnativeSettings, api=None) -> None:
        self.settings = settings
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config()
                except (config.ConfigException, OSError) as e:
                    raise KnativeConfigError(
                        "the knative function platform needs a cluster: no in-cluster service account and no "
                        f"usable kubeconfig ({e}); run it in the cluster (k8s/base/backbone.yaml) or set KUBECONFIG"
                    ) from None
            api = client.CustomObjectsApi()
        self.api = api
        self._specs: dict[str, FunctionSpec] = {}
        self._addresses: dict[str, str] = {}  # function -> its Service's address

    def _list(self) -> list[dict]:
        items = self.api.list_namespaced_custom_object(
            GROUP, VERSION, self.settings.namespace, PLURAL, label_selector=f"{PART_OF}=remoe"
        )
        return items.get("items", [])

    def deploy(self, specs: list[FunctionSpec]) -> None:
        from kubernetes.client.exceptions import ApiException

        ns = self.settings.namespace
        wanted = {self.settings.service_name(s.name): s for s in specs}
        existing = {item["metadata"]["name"]: item for item in self._list()}
        for name, spec in wanted.items():
            body = render_service(spec, self.settings)
            if name in existing:
                body["metadata"]["resourceVersion"] = existing[name]["metadata"].get("resourceVersion")
                self.api.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body)
                log.info("updated Knative Service %s/%s", ns, name)
            else:
                self.api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
                log.info("created Knative Service %s/%s", ns, name)
        for name in existing.keys() - wanted.keys():
            try:
                self.api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
                log.info("deleted Knative Service %s/%s", ns, name)
            except ApiException as e:
                if e.status != 404:
                    raise
        self._specs = {s.name: s for s in specs}
        self._addresses = {n: a for n, a in self._addresses.items() if n in self._specs}

    def ensure(self, specs: list[FunctionSpec]) -> None:
        """Create the Knative Services of these functions that do not exist yet; delete nothing (a request's
        plan adds functions; Knative scales idle ones to zero)."""
        ns = self.settings.namespace
        existing = {item["metadata"]["name"] for item in self._list()}
        for spec in specs:
            name = self.settings.service_name(spec.name)
            if name not in existing:
                self.api.create_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, render_service(spec, self.settings)
                )
                log.info("created Knative Service %s/%s", ns, name)
            self._specs[spec.name] = spec

    def endpoints(self, name: str, timeout_s: float = 120.0) -> list[str]:
        """The Service's cluster-local address; Knative balances over (and cold-starts) its instances. Asked of
        the API once per Service (its address does not change), not once per batch."""
        address = self._addresses.get(name)
        if address is None:
            item = self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.settings.namespace, PLURAL, self.settings.service_name(name)
            )
            url = item.get("status", {}).get("address", {}).get("url") or item.get("status", {}).get("url", "")
            if not url:
                return []  # not ready yet: no address
            address = self._addresses[name] = address_of_url(url)
        return [address]

    def live_endpoints(self, name: str) -> list[tuple[int, str]]:
        """The Service's address counts as live even at zero instances: Knative's activator holds the call until
        an instance serves (the cold start happens there, not here)."""
        return list(enumerate(self.endpoints(name)))

    def touch(self, name: str, replica: int) -> None:
        pass  # Knative's autoscaler sees the traffic itself

    def lease(self):
        return nullcontext()  # Knative scales on traffic; a request in flight is traffic

    @property
    def keep_alive_s(self) -> float:
        return float(self.settings.idle_ttl_s)

    def running(self) -> list[FunctionSpec]:
        """Every Service this backbone created: reusing one (even scaled to zero) creates no new Service."""
        return list(self._specs.values())

    def warm(self, names: list[str] | None = None, bounded: bool = False) -> None:
        """Knative starts instances on the first request: send each function a Stats call now."""
        import grpc

        from remoe.proto import expert_pb2, expert_pb2_grpc

        for name in names if names is not None else list(self._specs):
            for address in self.endpoints(name):
                stub = expert_pb2_grpc.ExpertServiceStub(grpc.insecure_channel(address))
                stub.Stats.future(expert_pb2.StatsRequest(), timeout=120)  # fire and forget

    def status(self) -> list[InstanceStatus]:
        out = []
        for item in self._list():
            labels = item["metadata"].get("labels", {})
            conditions = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
            annotations = item["spec"]["template"]["metadata"].get("annotations", {})
            memory = item["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            out.append(
                InstanceStatus(
                    function=labels.get(FUNCTION_LABEL, item["metadata"]["name"]),
                    replica=int(annotations.get("autoscaling.knative.dev/max-scale", "1")),
                    state="ready" if conditions.get("Ready") == "True" else "not ready",
                    address=item.get("status", {}).get("url", ""),
                    memory_mb=int(memory.removesuffix("Mi")),
                )
            )
        return out

    def close(self) -> None:
        pass
