"""Shared fixtures: seeded tiny checkpoints, made once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoModelForCausalLM

from remoe.model.tiny import TinySpec, make_tiny_model

# One tiny spec per architecture; top-k varies so partial sums of 2, 3 and 4 experts are all exercised.
ARCH_SPECS: dict[str, TinySpec] = {
    "mixtral": TinySpec("mixtral", layers=3, experts=8, top_k=2),
    "qwen2_moe": TinySpec("qwen2_moe", layers=3, experts=8, top_k=4),
    "qwen3_moe": TinySpec("qwen3_moe", layers=3, experts=8, top_k=2),
    "olmoe": TinySpec("olmoe", layers=3, experts=8, top_k=3),
    "deepseek_v2": TinySpec("deepseek_v2", layers=4, experts=8, top_k=3),  # 1 dense + 3 MoE layers
    "gpt_oss": TinySpec("gpt_oss", layers=3, experts=8, top_k=2),
}
ARCHS = list(ARCH_SPECS)
LAYOUTS = ["per-expert", "fused"]
PROMPT = "The quick brown fox explains how a hash table works"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Callable[..., Path]:
    """tiny_model(arch, layout="per-expert") -> checkpoint directory (made once per session)."""
    made: dict[tuple[str, str], Path] = {}

    def get(arch: str, layout: str = "per-expert") -> Path:
        if (arch, layout) not in made:
            out = tmp_path_factory.mktemp(f"{arch}-{layout}")
            made[(arch, layout)] = make_tiny_model(ARCH_SPECS[arch], out, layout=layout)
        return made[(arch, layout)]

    return get


@pytest.fixture(scope="session")
def reference(tiny_model) -> Callable[..., AutoModelForCausalLM]:
    """reference(arch) -> transformers' own model for the arch's per-expert checkpoint, float32, eval."""
    loaded: dict[str, AutoModelForCausalLM] = {}

    def get(arch: str) -> AutoModelForCausalLM:
        if arch not in loaded:
            model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), dtype=torch.float32)
            loaded[arch] = model.eval()
        return loaded[arch]

    return get


def reference_generate(model, token_ids: list[int], max_new_tokens: int = 32) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([token_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(token_ids) :].tolist()


def reference_logits(model, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([token_ids])).logits[0].float()


def pytest_collection_modifyitems(items) -> None:
    """A test that needs a redis-server starts one: it is one of the `processes` tests (make test-unit)."""
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server on 127.0.0.1 for this session (.ci/run installs Debian's redis-server)."""
    import shutil
    import subprocess
    import time

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (make test does it where it can)")
    from remoe.cluster import free_port

    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait()


def warm_functions(client, timeout_s: float = 90.0) -> None:
    """Start every function of the cluster's plan and wait until each instance serves: a request does not wait
    for cold starts (their batches run on an expert service meanwhile), so a test that means to exercise the
    functions themselves waits here first. The first request's arrival is what pre-warms them."""
    import time

    client.generate(prompt="warm", max_new_tokens=1)
    deadline = time.monotonic() + timeout_s
    while not all(f.state == "warm" for f in client.status().backbone.functions):
        assert time.monotonic() < deadline, "functions did not start"
        time.sleep(0.1)


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05):
    """Poll `condition` until it is truthy (its value is returned) or fail naming `what`: a test waits for an
    observable state, never for a fixed time."""
    import time

    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(poll_s)
    return value


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page, parsed by prometheus_client's own parser: (name, labels) -> value."""
    text = httpx.get(url, timeout=10).raise_for_status().text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
