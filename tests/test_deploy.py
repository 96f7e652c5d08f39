"""The deployment artifacts, checked offline (no Docker engine, no cluster here): the compose file, the
Kubernetes manifests (kustomize + the core schemas + Knative's CRD schema), the Dockerfiles, and that all of
them configure the services by names the services actually read."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from remoe.platform.knative import KnativeSettings, default_template, load_template, render_service
from remoe.platform.plan import load_plan_file
from remoe.settings import SERVICES, env_prefix
from tests.deployment import COMPOSE_FILE, ROOT, compose_command, inherited, parse_dockerfile

pytestmark = pytest.mark.processes  # runs docker-compose, kubectl and kustomize

KIND_NODE_VERSION = "1.33.0"  # the schemas for k8s/kind/cluster.yaml's kindest/node:v1.33.x
VERSION = "0.1.0"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [p.strip() for p in lines if p.strip() and not p.startswith("#")]


def python_modules_in(command: str) -> list[str]:
    """Modules run by `python -m X` in a CMD/HEALTHCHECK (exec form or shell form)."""
    if command.startswith("["):
        words = yaml.safe_load(command)
    else:
        words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"]


def module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def rendered_k8s() -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render k8s/ (scripts/install-system-deps.sh says how to install it)"
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s")], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def knative_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((ROOT / "k8s/schemas/services.serving.knative.dev.crd.yaml").read_text())
    return jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def remoe_variables(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """REMOE_<SERVICE>_<FIELD> variables grouped by service (the function's own REMOE_* are not services')."""
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        for service, cls in SERVICES.items():
            if key.startswith(env_prefix(cls)):
                out.setdefault(service, {})[key.removeprefix(env_prefix(cls)).lower()] = value
    return out


def assert_known_settings(where: str, service: str, values: dict[str, str]) -> None:
    cls = SERVICES[service]
    unknown = values.keys() - cls.model_fields.keys()
    assert not unknown, f"{where}: {service} has no setting(s) {sorted(unknown)} (remoe/settings.py)"
    required = {name for name, info in cls.model_fields.items() if info.is_required()}
    assert required <= values.keys(), f"{where}: {service} needs {sorted(required - values.keys())}"


# ---------------------------------------------------------------------------------------------- compose
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_file_validates(profile):
    env = {**os.environ, "COMPOSE_PROFILES": profile}
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr


def test_compose_configures_services_by_their_settings_names():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    configured = set()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for kind, values in remoe_variables(env).items():
            assert_known_settings(f"docker-compose.yml service {name}", kind, values)
            configured.add(kind)
    assert configured == set(SERVICES), f"services missing from compose: {set(SERVICES) - configured}"


def test_compose_is_health_gated_and_private():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    _, stages = parse_dockerfile(ROOT / "docker/Dockerfile")
    healthy_targets = {s.name for s in stages if inherited(stages, s, "HEALTHCHECK")}
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                target = services[dependency]["image"].split("/")[-1].split(":")[0]
                assert "healthcheck" in services[dependency] or target in healthy_targets, (
                    f"{name} waits for {dependency} to be healthy, but {dependency} has no health check"
                )
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    # Which backbone runs is a profile; both answer to the name the gateway dials.
    assert services["backbone"]["profiles"] == ["cpu"] and services["backbone-gpu"]["profiles"] == ["gpu"]
    assert "backbone" in services["backbone-gpu"]["networks"]["default"]["aliases"]
    reservation = services["backbone-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]
    assert "COMPOSE_PROFILES=cpu" in (ROOT / ".env").read_text()


def test_compose_publishes_the_http_api_and_prometheus_scrapes_every_service():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert "127.0.0.1:8000:8000" in services["gateway"]["ports"]
    _, stages = parse_dockerfile(ROOT / "docker/Dockerfile")
    by_name = {s.name: s for s in stages}
    expected = set()
    for name, service in services.items():
        kind = service["image"].split("/")[-1].split(":")[0]
        if kind in SERVICES:
            image_env = dict(w.split("=", 1) for w in shlex.split(by_name[kind].last("ENV")))
            key = f"{env_prefix(SERVICES[kind])}{'HTTP_PORT' if kind == 'gateway' else 'METRICS_PORT'}"
            port = (service.get("environment") or {}).get(key) or image_env[key]
            expected.add(f"{name}:{port}")
    config = yaml.safe_load((ROOT / "docker/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == expected
    mount = "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in services["prometheus"]["volumes"]


# ---------------------------------------------------------------------------------------------- kubernetes
def test_kustomize_renders_objects_that_validate_against_kubernetes_schemas():
    objects = rendered_k8s()
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for workload in ("gateway", "predictor", "scheduler", "backbone"):
        assert ("Deployment", workload) in kinds and ("Service", workload) in kinds
    assert {("StatefulSet", "expert"), ("StatefulSet", "qdrant"), ("StatefulSet", "redis")} <= kinds
    assert ("PersistentVolumeClaim", "remoe-models") in kinds and ("Job", "model-init") in kinds
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KIND_NODE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} does not validate against Kubernetes {KIND_NODE_VERSION}: {e.message}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "remoe", f"{where} is outside the remoe namespace"


def test_kubernetes_schema_check_catches_a_broken_object():
    deployment = next(o for o in rendered_k8s() if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "fifty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KIND_NODE_VERSION, strict=True)


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def test_remoe_workloads_probe_grpc_health_run_as_non_root_and_use_their_settings_names():
    remoe = [w for w in workloads(rendered_k8s()) if "remoe.dev/service" in w["metadata"].get("labels", {})]
    assert {w["metadata"]["name"] for w in remoe} == {"gateway", "backbone", "predictor", "scheduler", "expert"}
    for w in remoe:
        where = f"{w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        container = pod["containers"][0]
        port = container["ports"][0]["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{where}: {probe} is not gRPC health on {port}"
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]["memory"], f"{where} requests no memory"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/models"]["readOnly"] and "/tmp" in mounts, f"{where}: model volume or /tmp not mounted"
        assert [c["name"] for c in pod["initContainers"]] == ["wait-for-model"]
        env = {e["name"]: e.get("value", "<from field>") for e in container["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        for kind, values in remoe_variables(env).items():
            assert_known_settings(where, kind, values)
            assert values["host"] == "0.0.0.0" and int(values.get("port", port)) == port


def test_every_remoe_workload_serves_metrics_where_its_annotations_say_and_kind_maps_the_http_api():
    objects = rendered_k8s()
    for w in workloads(objects):
        if "remoe.dev/service" not in w["metadata"].get("labels", {}):
            continue
        where = f"{w['kind']}/{w['metadata']['name']}"
        template = w["spec"]["template"]
        container = template["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        port = next(v for k, v in env.items() if k.endswith("_METRICS_PORT") or k == "REMOE_GATEWAY_HTTP_PORT")
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port, where
        assert int(port) in {p["containerPort"] for p in container["ports"]}, f"{where} does not declare {port}"
    gateway = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "gateway")
    http = next(p for p in gateway["spec"]["ports"] if p["name"] == "http")
    assert http["port"] == http["targetPort"] == 8000
    node = yaml.safe_load((ROOT / "k8s/kind/cluster.yaml").read_text())["nodes"][0]
    mapping = {m["containerPort"]: m for m in node["extraPortMappings"]}
    assert mapping[http["nodePort"]]["hostPort"] == 8000 and mapping[http["nodePort"]]["listenAddress"] == "127.0.0.1"


def test_backbone_may_manage_knative_services_in_its_namespace_only():
    objects = rendered_k8s()
    backbone = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "backbone")
    account = backbone["spec"]["template"]["spec"]["serviceAccountName"]
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "remoe"}]
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == binding["roleRef"]["name"])
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("serving.knative.dev", "services") in granted
    assert all(g == "serving.knative.dev" for g, _ in granted), "the backbone gets nothing beyond Knative Services"
    assert not any(o["kind"] == "ClusterRoleBinding" for o in objects)
    env = {e["name"]: e.get("value") for e in backbone["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REMOE_BACKBONE_FUNCTION_PLATFORM"] == "knative"
    mounts = {m["mountPath"] for m in backbone["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert str(Path(env["REMOE_BACKBONE_KNATIVE_TEMPLATE"]).parent) in mounts


def test_the_function_template_in_k8s_is_a_valid_knative_service_and_renders_like_the_default():
    validator = knative_validator()
    path = ROOT / "k8s/base/function-template.yaml"
    template = load_template(path)
    errors = sorted(validator.iter_errors(template), key=str)
    assert not errors, f"{path}: {errors[0].message}"
    assert template == default_template(), "k8s/base/function-template.yaml differs from the built-in default"
    # Rendered per plan from the k8s copy (as the backbone does in the cluster): valid, and what the default gives.
    rendered_template = KnativeSettings(image="dev.local/remoe/expert-function:0.1.0", template=template)
    rendered_default = KnativeSettings(image="dev.local/remoe/expert-function:0.1.0")
    for spec in load_plan_file(ROOT / "docs/sample-plan.json"):
        body = render_service(spec, rendered_template)
        assert body == render_service(spec, rendered_default)
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, f"{spec.name}: {errors[0].message}"
        assert body["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    assert template["spec"]["template"]["spec"]["containers"][0]["image"] == f"remoe/expert-function:{VERSION}"


def test_a_customised_template_keeps_its_additions_and_a_bad_one_is_refused(tmp_path):
    template = default_template()
    template["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "functions"}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(template))
    spec = load_plan_file(ROOT / "docs/sample-plan.json")[0]
    body = render_service(spec, KnativeSettings(template=load_template(path)))
    assert body["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "functions"}
    assert body["metadata"]["name"] == f"remoe-{spec.name}"
    del template["spec"]["template"]["spec"]["volumes"]
    path.write_text(yaml.safe_dump(template))
    with pytest.raises(ValueError, match="volume named 'model'"):
        load_template(path)
    path.write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment"}))
    with pytest.raises(ValueError, match="not a serving.knative.dev/v1 Service"):
        load_template(path)


def test_kind_cluster_maps_the_gateway_and_pins_its_node_image():
    cluster = yaml.safe_load((ROOT / "k8s/kind/cluster.yaml").read_text())
    node = cluster["nodes"][0]
    assert re.fullmatch(r"kindest/node:v1\.33\.\d+", node["image"])
    gateway = next(o for o in rendered_k8s() if o["kind"] == "Service" and o["metadata"]["name"] == "gateway")
    mapping = {m["containerPort"]: m for m in node["extraPortMappings"]}
    node_port = gateway["spec"]["ports"][0]["nodePort"]
    assert mapping[node_port]["hostPort"] == 50051 and mapping[node_port]["listenAddress"] == "127.0.0.1"
    script = (ROOT / "scripts/kind-up.sh").read_text()
    assert re.search(r"KNATIVE_VERSION:-1\.\d+\.\d+", script), "the Knative release is pinned"


# ---------------------------------------------------------------------------------------------- images
def test_dockerfile_basics():
    path = ROOT / "docker/Dockerfile"
    args, stages = parse_dockerfile(path)
    names = {s.name for s in stages if s.name}
    ignored = dockerignore_patterns()
    for stage in stages:
        if stage.base not in names:
            image, _, tag = stage.base.partition(":")
            assert tag and tag != "latest", f"{path}: base image {stage.base} is not pinned"
        for instruction, rest in stage.instructions:
            if instruction == "COPY" and "--from=" not in rest:
                *sources, _ = rest.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"{path}: COPY {source}: no such file in the build context"
                    hit = [p for p in ignored if fnmatch.fnmatch(source.rstrip("/"), p.rstrip("/"))]
                    assert not hit, f"{path}: COPY {source} is excluded by .dockerignore ({hit})"
            if instruction in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
                for module in python_modules_in(rest.removeprefix("CMD ").strip()):
                    assert module_exists(module), f"{path}: {instruction} runs module {module}, which does not exist"
    build = " ".join(rest for stage in stages for ins, rest in stage.instructions if ins == "RUN")
    assert "python -m remoe.proto.generate" in build, f"{path}: the gRPC stubs are not generated at build"
    copied = {m for s in stages for ins, rest in s.instructions for m in re.findall(r"--from=(\S+)", rest)}
    final = [s for s in stages if s.name not in {t.base for t in stages} | copied]  # the images themselves
    for stage in final:
        user = inherited(stages, stage, "USER")
        assert user and user.split(":")[0] not in ("0", "root"), f"{path}: stage {stage.name} runs as root"
        command = inherited(stages, stage, "CMD") or inherited(stages, stage, "ENTRYPOINT")
        assert command, f"{path}: stage {stage.name} has no CMD"


def test_every_service_image_has_a_target_a_health_check_and_a_default_port():
    _, stages = parse_dockerfile(ROOT / "docker/Dockerfile")
    by_name = {s.name: s for s in stages}
    makefile = (ROOT / "Makefile").read_text()
    built = re.search(r"^SERVICE_IMAGES := (.+)$", makefile, re.MULTILINE).group(1).split()
    assert set(SERVICES) | {"tools"} == set(built)
    assert "--target function -t remoe/expert-function:$(VERSION)" in makefile
    assert by_name["function"].last("CMD") == '["python", "-m", "remoe.functions.expert"]'
    for service, cls in SERVICES.items():
        stage = by_name[service]
        assert f"python -m remoe.probe {service}" in " ".join(
            yaml.safe_load(stage.last("HEALTHCHECK").split("CMD ")[1])
        )
        assert stage.last("EXPOSE").split()[0] == str(cls.model_fields["port"].default)
        metrics = "HTTP_PORT=8000" if service == "gateway" else "METRICS_PORT=9464"
        assert f"{env_prefix(cls)}{metrics}" in stage.last("ENV") and metrics[-4:] in stage.last("EXPOSE").split()
        assert f"{env_prefix(cls)}HOST=0.0.0.0" in stage.last("ENV")
    # Images the manifests and the compose file use are the ones make images builds.
    images = set(re.findall(r"remoe/[\w-]+:[\w.]+", COMPOSE_FILE.read_text()))
    images |= {
        c["image"].removeprefix("dev.local/")
        for o in workloads(rendered_k8s())
        for c in o["spec"]["template"]["spec"]["containers"] + o["spec"]["template"]["spec"].get("initContainers", [])
        if c["image"].split("/")[-2:][0] == "remoe"
    }
    buildable = {f"remoe/{name}:{VERSION}" for name in built} | {
        f"remoe/expert-function:{VERSION}",
        f"remoe/backbone-cuda:{VERSION}",
    }
    assert images <= buildable, f"images nobody builds: {images - buildable}"


def test_public_images_and_releases_are_pinned():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    images = {s["image"] for s in compose["services"].values()}
    for o in workloads(rendered_k8s()):
        pod = o["spec"]["template"]["spec"]
        images |= {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
    images.add(yaml.safe_load((ROOT / "k8s/kind/cluster.yaml").read_text())["nodes"][0]["image"])
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and re.search(r"\d+\.\d+", tag), f"{image} is not pinned to a release"
    urls = re.findall(r"https://\S+", (ROOT / "scripts/kind-up.sh").read_text())
    assert urls and all("${KNATIVE_VERSION}" in url for url in urls), urls


def test_no_package_index_is_written_in_the_repository():
    """pip's own index (or the user's pip configuration) decides where packages come from; an index URL in the
    repository would override a user's mirror and date with the host."""
    index = re.compile(r"https?://[^\s\"'`]*(pypi\.|/simple\b|/whl/|download\.pytorch)", re.IGNORECASE)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    found = []
    for name in tracked.split():
        path = ROOT / name
        if path.suffix in {".png", ".json"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if index.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "package index URLs in the repository:\n" + "\n".join(found)
