"""Knative manifests: rendered per function, valid against Knative's own CRD schema; applied, updated and
deleted through the kubernetes client (a stand-in API here: there is no cluster on this machine)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from remoe.platform.base import FunctionSpec, functions_from_json, functions_to_json
from remoe.platform.knative import KnativeFunctionPlatform, KnativeSettings, render_service

ROOT = Path(__file__).resolve().parents[1]
CRD_NAME = "services.serving.knative.dev.crd.yaml"
CRD = ROOT / "k8s" / "schemas" / CRD_NAME  # vendored copy of Knative's own CRD (see k8s/schemas/README.md)
SHARED_CRD = ROOT.parent / "shared" / "schemas" / "knative" / CRD_NAME
SAMPLE = [
    FunctionSpec("layer1-remote", experts=((1, 5), (1, 6), (1, 7)), memory_mb=1536, replicas=2, concurrency=4),
    FunctionSpec("layer2-remote", experts=((2, 7),), memory_mb=512),
]


@pytest.fixture(scope="module")
def validator():
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def test_the_vendored_crd_is_the_shared_reference():
    if not SHARED_CRD.is_file():
        pytest.skip(f"no shared reference schema at {SHARED_CRD}")
    assert CRD.read_bytes() == SHARED_CRD.read_bytes()


def test_rendered_services_validate_against_the_crd(validator):
    for spec in SAMPLE:
        manifest = render_service(spec, KnativeSettings(namespace="remoe"))
        errors = list(validator.iter_errors(manifest))
        assert not errors, [e.message for e in errors]


def test_the_schema_check_catches_a_broken_manifest(validator):
    manifest = render_service(SAMPLE[0], KnativeSettings())
    broken = copy.deepcopy(manifest)
    broken["spec"]["template"]["spec"]["containerConcurrency"] = "four"
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "h2c"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_manifest_carries_the_plan(validator):
    manifest = render_service(SAMPLE[0], KnativeSettings(namespace="prod", image="reg/fn:1", model_pvc="models"))
    template = manifest["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    container = template["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert manifest["metadata"] == {
        "name": "remoe-layer1-remote",
        "namespace": "prod",
        "labels": {
            "app.kubernetes.io/part-of": "remoe",
            "networking.knative.dev/visibility": "cluster-local",  # no route from outside the cluster
            "remoe.dev/function": "layer1-remote",
        },
    }
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "2"
    assert template["spec"]["containerConcurrency"] == 4
    assert container["ports"] == [{"name": "h2c", "containerPort": 8080}]
    assert container["resources"]["limits"] == {"memory": "1536Mi", "cpu": "1500m"}
    assert env["REMOE_FUNCTION_EXPERTS"] == "1:5,6,7" and env["REMOE_MEMORY_BYTES"] == str(1536 * 2**20)
    assert template["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


class FakeCustomObjectsApi:
    """Stand-in for kubernetes.client.CustomObjectsApi, keeping objects in a dict."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.calls: list[str] = []

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        key, _, value = label_selector.partition("=")
        items = [o for o in self.objects.values() if o["metadata"]["labels"].get(key) == value]
        return {"items": copy.deepcopy(items)}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(f"create {body['metadata']['name']}")
        self.objects[body["metadata"]["name"]] = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        assert body["metadata"]["resourceVersion"], "updates must carry the resourceVersion"
        self.calls.append(f"replace {name}")
        self.objects[name] = body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(f"delete {name}")
        del self.objects[name]

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        obj = copy.deepcopy(self.objects[name])
        obj["status"] = {"address": {"url": f"http://{name}.{namespace}.svc.cluster.local"}}
        return obj


def test_deploy_creates_updates_and_deletes_services():
    api = FakeCustomObjectsApi()
    platform = KnativeFunctionPlatform(KnativeSettings(namespace="remoe"), api=api)
    platform.deploy(SAMPLE)
    assert sorted(api.calls) == ["create remoe-layer1-remote", "create remoe-layer2-remote"]

    api.calls.clear()
    bigger = FunctionSpec("layer1-remote", experts=SAMPLE[0].experts, memory_mb=2048, replicas=3)
    platform.deploy([bigger])
    assert sorted(api.calls) == ["delete remoe-layer2-remote", "replace remoe-layer1-remote"]
    container = api.objects["remoe-layer1-remote"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "2048Mi"
    assert platform.endpoints("layer1-remote") == ["remoe-layer1-remote.remoe.svc.cluster.local:80"]
    assert [(s.function, s.memory_mb) for s in platform.status()] == [("layer1-remote", 2048)]


def test_function_specs_round_trip_through_json():
    raw = json.loads(json.dumps(functions_to_json(SAMPLE)))
    assert functions_from_json(raw) == SAMPLE
    with pytest.raises(ValueError, match="malformed"):
        functions_from_json({"functions": [{"name": "x"}]})


def test_the_documented_sample_is_current_and_valid(validator):
    docs = ROOT / "docs"
    specs = functions_from_json(json.loads((docs / "sample-plan.json").read_text()))
    rendered = [render_service(s, KnativeSettings()) for s in specs]
    committed = list(yaml.safe_load_all((docs / "knative-sample.yaml").read_text()))
    assert committed == rendered, "docs/knative-sample.yaml is stale: run remoe knative-render --plan ..."
    for manifest in committed:
        assert not list(validator.iter_errors(manifest))


def test_service_addresses_come_from_the_knative_url():
    from remoe.platform.knative import address_of_url

    assert address_of_url("http://remoe-layer-1.remoe.svc.cluster.local") == "remoe-layer-1.remoe.svc.cluster.local:80"
    assert address_of_url("http://10.0.0.5:8012/") == "10.0.0.5:8012"


def test_without_a_cluster_the_platform_says_so(tmp_path, monkeypatch):
    from remoe.platform.knative import KnativeConfigError, KnativeFunctionPlatform

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KnativeConfigError, match="needs a cluster"):
        KnativeFunctionPlatform(KnativeSettings())


def test_the_dispatcher_runs_plans_on_knative_reusing_services():
    """The backbone's dispatcher with the Knative platform: a plan creates a Service; a later plan whose experts
    it hosts creates none; the Service's address is asked of the API once, not per batch."""
    from remoe.dispatch.executor import DispatchingExecutor
    from remoe.experts.placement import Placement

    api = FakeCustomObjectsApi()
    platform = KnativeFunctionPlatform(KnativeSettings(namespace="remoe"), api=api)
    everything = [(layer, e) for layer in (0, 1) for e in range(4)]
    executor = DispatchingExecutor(Placement({"127.0.0.1:1": everything}), [0, 1], 4, platform=platform)
    first = executor.routing_for([FunctionSpec("l1-a", ((1, 2), (1, 3)), 1024)])
    assert api.calls == ["create remoe-l1-a"] and first.memory_mb == {"l1-a": 1024}
    second = executor.routing_for([FunctionSpec("l1-b", ((1, 3),), 2048)])
    assert api.calls == ["create remoe-l1-a"], "expert (1, 3) is hosted by l1-a already"
    assert second.placement.destinations["function:l1-a"] == [(1, 3)]
    gets = []
    api.get_namespaced_custom_object = lambda *a, _get=api.get_namespaced_custom_object: gets.append(a) or _get(*a)
    for _ in range(3):
        assert platform.live_endpoints("l1-a") == [(0, "remoe-l1-a.remoe.svc.cluster.local:80")]
    assert len(gets) == 1
    with platform.lease():
        platform.touch("l1-a", 0)
