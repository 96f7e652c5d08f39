"""docker-compose.yml's own configuration brought up as local processes: what compose would start, minus the
containers (no Docker engine here).

Every Remoe service gets exactly the environment `docker-compose config` resolves for it, the image's own
ENV and CMD (docker/Dockerfile), and is counted up when its health check (the compose file's, else the
image's HEALTHCHECK) passes, in depends_on order; model-init runs its command into an empty model directory.
Only what the container network provides differs: service hostnames become 127.0.0.1 with a free port each,
0.0.0.0 becomes 127.0.0.1, the predictor uses embedded Qdrant (no Qdrant server here), traces go nowhere.
Then a request through the SDK must give transformers' own tokens and be metered in Redis.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
import torch
import yaml
from transformers import AutoModelForCausalLM

from remoe.cluster import free_port
from remoe.model.tokenizer import load_tokenizer
from remoe.sdk import Client
from remoe.settings import SERVICES, env_prefix
from tests.conftest import reference_generate, scrape
from tests.deployment import COMPOSE_FILE, ROOT, compose_command, inherited, parse_dockerfile

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

STARTUP_S = 240


def resolved_compose(profile: str = "cpu") -> dict:
    """The file as compose resolves it (defaults for every variable), with only the services the profile runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOE_")}
    env["COMPOSE_PROFILES"] = profile
    out = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config"], env=env, capture_output=True, text=True, check=True
    )
    compose = yaml.safe_load(out.stdout)
    compose["services"] = {
        name: s for name, s in compose["services"].items() if profile in s.get("profiles", [profile])
    }
    return compose


def image_env(stage_env: str) -> dict[str, str]:
    """ENV KEY=VALUE ... of a Dockerfile stage ($PATH-style references dropped)."""
    pairs = dict(word.split("=", 1) for word in shlex.split(stage_env))
    return {k: v for k, v in pairs.items() if "$" not in v}


def local_python(words: list[str]) -> list[str]:
    """`python` in an image's command is this interpreter here (a word, or inside a `sh -c` script)."""
    return [re.sub(r"(?<![\w/])python(?= |$)", sys.executable, w) for w in words]


class Emulation:
    def __init__(self, compose: dict, redis_url: str, work: Path) -> None:
        self.compose = compose
        self.work = work
        _, self.stages = parse_dockerfile(ROOT / "docker/Dockerfile")
        self.by_stage = {s.name: s for s in self.stages}
        self.processes: dict[str, subprocess.Popen] = {}
        redis_address = redis_url.split("//")[1].split("/")[0]
        # Every name:port a container would dial, as 127.0.0.1:free-port here.
        self.addresses = {"redis:6379": redis_address}
        self.ports: dict[str, int] = {}
        self.metrics_ports: dict[str, int] = {}  # every service's /metrics port (the gateway's: its HTTP API)
        for name, service in compose["services"].items():
            kind = self.kind(service)
            if kind in SERVICES:
                self.ports[name] = free_port()
                self.metrics_ports[name] = free_port()
                default = SERVICES[kind].model_fields["port"].default
                for alias in [name, *service.get("networks", {}).get("default", {}).get("aliases", [])]:
                    self.addresses[f"{alias}:{default}"] = f"127.0.0.1:{self.ports[name]}"

    @staticmethod
    def kind(service: dict) -> str:
        return service["image"].split("/")[-1].split(":")[0]

    def rewrite(self, text: str) -> str:
        """A container's view as this machine's: name:port -> 127.0.0.1:port; the mounts /models (the models
        volume) and /tmp (the container's own) -> folders under the work directory."""
        text = re.sub(r"\b[\w-]+:\d+\b", lambda m: self.addresses.get(m.group(0), m.group(0)), text)
        text = re.sub(r"(?<![\w/.-])/(models|tmp)(?=/|$|\b)", lambda m: f"{self.work}/{m.group(1)}", text)
        return text.replace("$$", "$")

    def env(self, name: str, service: dict) -> dict[str, str]:
        kind = self.kind(service)
        stage = self.by_stage[kind]
        env = {**os.environ, **image_env(" ".join(a for i, a in stage.instructions if i == "ENV"))}
        env.update({k: self.rewrite(str(v)) for k, v in (service.get("environment") or {}).items()})
        env.update(OTEL_TRACES_EXPORTER="none", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the image's /opt/remoe/bin
        if kind in SERVICES:
            prefix = env_prefix(SERVICES[kind])
            env[f"{prefix}HOST"] = "127.0.0.1"
            env[f"{prefix}PORT"] = str(self.ports[name])
            env[f"{prefix}HTTP_PORT" if kind == "gateway" else f"{prefix}METRICS_PORT"] = str(self.metrics_ports[name])
        if kind == "predictor":  # embedded Qdrant instead of the server
            del env["REMOE_PREDICTOR_QDRANT_URL"]
            env["REMOE_PREDICTOR_QDRANT_PATH"] = str(self.work / "qdrant")
        return env

    def command(self, service: dict) -> list[str]:
        if "command" in service:  # model-init: entrypoint sh -c, command the script
            return [*service["entrypoint"], *(self.rewrite(c) for c in service["command"])]
        return local_python(yaml.safe_load(inherited(self.stages, self.by_stage[self.kind(service)], "CMD")))

    def health_command(self, service: dict) -> list[str]:
        """The compose file's health check, else the image's HEALTHCHECK."""
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD"
            return local_python([self.rewrite(w) for w in test[1:]])
        check = inherited(self.stages, self.by_stage[self.kind(service)], "HEALTHCHECK")
        return local_python(yaml.safe_load(check.split("CMD ", 1)[1]))

    def start(self, name: str) -> None:
        service = self.compose["services"][name]
        log = (self.work / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            self.command(service), env=self.env(name, service), stdout=log, stderr=subprocess.STDOUT, cwd=self.work
        )

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")[-3000:]

    def wait(self, name: str, condition: str) -> None:
        service = self.compose["services"][name]
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            code = self.processes[name].poll()
            if condition == "service_completed_successfully":
                if code is not None:
                    assert code == 0, f"{name} exited {code}:\n{self.log(name)}"
                    return
            else:
                assert code is None, f"{name} exited {code} while starting:\n{self.log(name)}"
                check = subprocess.run(
                    self.health_command(service), env=self.env(name, service), capture_output=True, timeout=30
                )
                if check.returncode == 0:
                    return
            time.sleep(1)
        pytest.fail(f"{name} not {condition} after {STARTUP_S} s:\n{self.log(name)}")

    def up(self) -> None:
        """Start the Remoe services in depends_on order, waiting for the condition their dependents declare
        (infrastructure, Redis and Qdrant, is given)."""
        services = {n: s for n, s in self.compose["services"].items() if self.kind(s) in self.by_stage}
        conditions = {d: c["condition"] for s in services.values() for d, c in s.get("depends_on", {}).items()}
        done: set[str] = set()
        while len(done) < len(services):
            ready = [
                n
                for n, s in services.items()
                if n not in done and all(d in done or d not in services for d in s.get("depends_on", {}))
            ]
            assert ready, f"depends_on cycle among {set(services) - done}"
            for name in ready:
                self.start(name)
            for name in ready:
                self.wait(name, conditions.get(name, "service_healthy"))
                done.add(name)

    def down(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def test_the_compose_cluster_configuration_serves_exact_tokens_and_meters_them(tmp_path, redis_url):
    model_dir = tmp_path / "models" / "model"  # the models volume's /models/model
    compose = resolved_compose()
    assert "backbone" in compose["services"] and "backbone-gpu" not in compose["services"]
    emulation = Emulation(compose, redis_url, tmp_path)
    try:
        emulation.up()
        assert (model_dir / "config.json").is_file(), "model-init wrote no model"
        ids = load_tokenizer(model_dir).encode("The quick brown fox")
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        expected = reference_generate(reference, ids, 16)
        client = Client(f"127.0.0.1:{emulation.ports['gateway']}", timeout=120)
        result = client.generate(token_ids=ids, max_new_tokens=16)
        assert result.token_ids == expected
        assert result.usage.forecast_source, "the gateway asked the predictor"
        ledger = redis.Redis.from_url(
            compose["services"]["gateway"]["environment"]["REMOE_GATEWAY_LEDGER_REDIS_URL"].replace(
                "redis:6379", redis_url.split("//")[1].split("/")[0]
            )
        )
        deadline = time.monotonic() + 10
        while ledger.xlen("remoe:ledger") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ledger.xlen("remoe:ledger") == 1, "the request was not metered in the compose ledger database"
        http = f"http://127.0.0.1:{emulation.metrics_ports['gateway']}"
        answer = httpx.post(
            f"{http}/v1/completions",
            json={"model": "model", "prompt": ids, "max_tokens": 16, "temperature": 0},
            timeout=120,
        )
        assert answer.json()["choices"][0]["text"] == result.text, "the HTTP API serves what the SDK does"
        for name in ("gateway", "backbone", "expert-0", "expert-1", "predictor", "scheduler"):
            assert scrape(f"http://127.0.0.1:{emulation.metrics_ports[name]}/metrics"), f"{name} serves no metrics"
    finally:
        emulation.down()
