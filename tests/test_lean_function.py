"""A function serving a `remoe split` directory computes from the manifest's record of the experts' math, without
importing transformers (seconds of a fresh function's cold start), and computes exactly what the full path does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from remoe.checkpoint.manifest import GATED_SILU, MANIFEST_FILE
from remoe.checkpoint.weights import open_weights
from remoe.experts.executor import LocalExpertExecutor
from remoe.functions.config import FunctionConfig
from remoe.functions.lean_weights import open_lean
from remoe.model.split import split_checkpoint
from remoe.platform.inherited_env import function_environment
from tests.conftest import ARCHS
from tests.test_local_platform import _compute

GATED = [a for a in ARCHS if a != "gpt_oss"]  # GPT-OSS: clamped SwiGLU with biases, computed by its class


@pytest.fixture(scope="module")
def split_dir(tiny_model, tmp_path_factory):
    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = tmp_path_factory.mktemp(f"lean-{arch}") / "split"
            split_checkpoint(tiny_model(arch), made[arch], progress=False)
        return made[arch]

    return get


def _without_record(split, tmp_path):
    """The same split as one made before the record existed."""
    old = tmp_path / "old-split"
    shutil.copytree(split, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["experts_math"]
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    return old


@pytest.mark.parametrize("arch", ARCHS)
def test_split_records_the_experts_math_only_where_the_family_kernels_cover_every_layer(arch, split_dir):
    full = open_weights(split_dir(arch))
    lean, why = open_lean(split_dir(arch))
    if arch == "gpt_oss":
        assert lean is None and "records no experts math" in why
        return
    assert lean is not None and lean.arch.experts_math.family == GATED_SILU
    assert lean.arch.layer_indices == full.arch.layer_indices
    assert (lean.arch.num_experts, lean.arch.hidden_size) == (full.arch.num_experts, full.arch.hidden_size)
    for m in full.arch.moe_layers:
        assert lean.arch.moe_layer(m.layer).param_shapes == m.param_shapes
        assert [lean.expert_nbytes_as(m.layer, e, torch.bfloat16) for e in range(m.num_experts)] == [
            full.expert_nbytes_as(m.layer, e, torch.bfloat16) for e in range(m.num_experts)
        ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", GATED)
def test_lean_weights_compute_bit_for_bit_what_the_full_weights_compute(arch, dtype, split_dir):
    full = open_weights(split_dir(arch))
    lean, _ = open_lean(split_dir(arch))
    g = torch.Generator().manual_seed(1)
    rows, k, experts = 9, full.arch.top_k, full.arch.num_experts
    hidden = torch.randn(rows, full.arch.hidden_size, generator=g).to(dtype)  # [T, H]
    index = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(rows)])  # [T, K]
    index[0, 0] = -1  # a slot another destination serves
    weights = torch.rand(rows, k, generator=g).to(dtype)
    for layer in full.arch.layer_indices:
        expected = LocalExpertExecutor(full, dtype=dtype).compute(layer, hidden, index, weights)
        got = LocalExpertExecutor(lean, dtype=dtype).compute(layer, hidden, index, weights)
        assert torch.equal(got, expected), f"layer {layer}"


def test_lean_weights_refuse_what_needs_the_class(split_dir):
    lean, _ = open_lean(split_dir("mixtral"))
    with pytest.raises(ValueError, match="compute on the CPU"):
        LocalExpertExecutor(lean, kernel="class")


def _serve_one(model_dir, tmp_path, hidden, index, routing):
    """Start `python -m remoe.functions.expert` as a fresh process (as Knative runs the image), answer one batch;
    (output, its log)."""
    ready, log = tmp_path / "fn.port", tmp_path / "fn.log"
    config = FunctionConfig(model_dir=model_dir, experts=[(0, 1), (0, 2)], name="lean", port=0, ready_file=ready)
    env = {**function_environment(), **config.to_env(), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "remoe.functions.expert"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        return _compute(f"127.0.0.1:{ready.read_text()}", 0, hidden, index, routing), log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.processes
def test_the_function_entrypoint_serves_a_split_without_transformers_and_an_old_split_with_it(split_dir, tmp_path):
    split = split_dir("mixtral")
    full = open_weights(split)
    hidden = torch.randn(3, full.arch.hidden_size)
    index, routing = torch.tensor([[1], [2], [1]]), torch.rand(3, 1)
    expected = LocalExpertExecutor(full, hosted=[(0, 1), (0, 2)]).compute(0, hidden, index, routing)

    got, log = _serve_one(split, tmp_path, hidden, index, routing)
    assert torch.equal(got, expected)
    assert "weights: lean" in log and "transformers imported: no" in log, log

    os.makedirs(tmp_path / "old", exist_ok=True)
    got, log = _serve_one(_without_record(split, tmp_path / "old"), tmp_path / "old", hidden, index, routing)
    assert torch.equal(got, expected)
    assert "weights: full" in log and "transformers imported: yes" in log, log
