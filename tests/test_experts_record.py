"""The backbone's experts record lets a local function (and its runtime template) serve an original checkpoint's
experts without importing transformers, computing bit for bit what the full path computes; a record that does not
hold (another checkpoint, changed files, malformed) is never used."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from remoe.checkpoint.weights import open_weights
from remoe.experts.executor import LocalExpertExecutor
from remoe.functions.config import FunctionConfig
from remoe.functions.experts_record import RECORD_FILE, write_record
from remoe.functions.lean_weights import open_lean
from remoe.platform.base import FunctionSpec
from remoe.platform.inherited_env import function_environment
from remoe.platform.local import LocalFunctionPlatform
from tests.conftest import ARCHS
from tests.test_local_platform import _compute

GATED = [a for a in ARCHS if a != "gpt_oss"]  # GPT-OSS: clamped SwiGLU with biases, computed by its class


@pytest.fixture(scope="module")
def recorded(tiny_model, tmp_path_factory):
    """arch -> (original checkpoint, its experts record)."""
    made = {}

    def get(arch: str):
        if arch not in made:
            model = tiny_model(arch)
            record, why = write_record(open_weights(model), tmp_path_factory.mktemp(f"record-{arch}"))
            assert record is not None, why
            made[arch] = (model, record)
        return made[arch]

    return get


def test_experts_that_need_their_class_get_no_record(tiny_model, tmp_path):
    record, why = write_record(open_weights(tiny_model("gpt_oss")), tmp_path)
    assert record is None and "layer" in why and not (tmp_path / RECORD_FILE).exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", GATED)
def test_a_recorded_checkpoint_computes_bit_for_bit_what_the_full_weights_compute(arch, dtype, recorded):
    model, record = recorded(arch)
    full = open_weights(model)
    lean, why = open_lean(model, record)
    assert lean is not None and "experts record" in why, why
    assert lean.arch.layer_indices == full.arch.layer_indices
    g = torch.Generator().manual_seed(2)
    rows, k, experts = 9, full.arch.top_k, full.arch.num_experts
    hidden = torch.randn(rows, full.arch.hidden_size, generator=g).to(dtype)  # [T, H]
    index = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(rows)])  # [T, K]
    index[0, 0] = -1  # a slot another destination serves
    weights = torch.rand(rows, k, generator=g).to(dtype)
    for m in full.arch.moe_layers:
        assert [lean.expert_nbytes_as(m.layer, e, dtype) for e in range(experts)] == [
            full.expert_nbytes_as(m.layer, e, dtype) for e in range(experts)
        ]
        expected = LocalExpertExecutor(full, dtype=dtype).compute(m.layer, hidden, index, weights)
        got = LocalExpertExecutor(lean, dtype=dtype).compute(m.layer, hidden, index, weights)
        assert torch.equal(got, expected), f"layer {m.layer}"


def test_a_record_that_does_not_hold_is_not_used(recorded, tiny_model, tmp_path):
    model, record = recorded("mixtral")
    lean, why = open_lean(tiny_model("qwen2_moe"), record)  # another checkpoint's record
    assert lean is None and "not of" in why

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    lean, why = open_lean(model, bad)
    assert lean is None and "cannot read the experts record" in why
    bad.write_text(json.dumps({"format": "remoe-experts-record/1", "model_dir": str(model)}))
    lean, why = open_lean(model, bad)
    assert lean is None and "malformed" in why

    raw = json.loads(record.read_text())
    name = next(iter(raw["files"]))
    raw["files"][name][1] -= 1  # the file's mtime differs: changed after the record was written
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(raw))
    lean, why = open_lean(model, stale)
    assert lean is None and "changed after the experts record" in why


@pytest.mark.processes
def test_a_fresh_function_serves_an_original_checkpoint_without_transformers_through_the_record(recorded, tmp_path):
    model, record = recorded("mixtral")
    full = open_weights(model)
    hidden = torch.randn(3, full.arch.hidden_size)
    index, routing = torch.tensor([[1], [2], [1]]), torch.rand(3, 1)
    expected = LocalExpertExecutor(full, hosted=[(0, 1), (0, 2)]).compute(0, hidden, index, routing)
    ready, log = tmp_path / "fn.port", tmp_path / "fn.log"
    config = FunctionConfig(
        model_dir=model, experts=[(0, 1), (0, 2)], name="recorded", port=0, ready_file=ready, experts_record=record
    )
    env = {**function_environment(), **config.to_env(), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "remoe.functions.expert"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        assert torch.equal(_compute(f"127.0.0.1:{ready.read_text()}", 0, hidden, index, routing), expected)
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert "weights: lean (experts record" in text and "transformers imported: no" in text, text


@pytest.mark.processes
def test_the_runtime_template_forks_lean_instances_from_the_record(recorded, tmp_path):
    model, record = recorded("mixtral")
    full = open_weights(model)
    hidden, index, routing = torch.randn(2, full.arch.hidden_size), torch.tensor([[1], [2]]), torch.ones(2, 1)
    expected = LocalExpertExecutor(full).compute(0, hidden, index, routing)
    platform = LocalFunctionPlatform(model, tmp_path, idle_ttl_s=60.0, experts_record=record)
    try:
        platform.deploy([FunctionSpec("f", experts=((0, 1), (0, 2)), memory_mb=2048)])
        (address,) = platform.endpoints("f", timeout_s=120)
        torch.testing.assert_close(_compute(address, 0, hidden, index, routing), expected, rtol=0, atol=1e-6)
        template = platform._launcher().pid
        with open(f"/proc/{template}/environ", "rb") as f:
            assert b"REMOE_FUNCTION_EXPERTS_RECORD=" in f.read()
    finally:
        platform.close()
    assert "weights lean (experts record" in (tmp_path / "template.log").read_text()
    # forked from the template: had it imported transformers, the instance would have it too
    assert "transformers imported: no" in (tmp_path / "f-0.log").read_text()
