"""The GPU backbone's one-copy staging of a layer's tensors: packing and views are exact on the CPU; on a GPU
machine (skipped elsewhere) the pinned path and a GPU backbone with CPU experts match transformers."""

import pytest
import torch

from remoe.checkpoint.weights import open_weights
from remoe.dispatch.executor import DispatchingExecutor
from remoe.experts.executor import LocalExpertExecutor
from remoe.model.engine import LocalEngine
from remoe.model.host_staging import stages_on_host, to_device, to_host
from tests.conftest import ARCHS, PROMPT, reference_generate, reference_logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("tokens", "hidden_size", "top_k"), [(1, 8, 2), (7, 12, 3), (33, 64, 6), (0, 16, 2)])
def test_to_host_returns_the_same_values_as_three_copies(dtype, tokens, hidden_size, top_k):
    g = torch.Generator().manual_seed(tokens)
    hidden = torch.randn(tokens, hidden_size, generator=g).to(dtype)
    index = torch.randint(-1, 16, (tokens, top_k), generator=g)
    weights = torch.rand(tokens, top_k, generator=g)  # float32 routing weights with a bf16 hidden, as some routers
    host = to_host(hidden, index, weights)
    assert host.hidden.dtype == dtype and host.hidden.shape == (tokens, hidden_size)
    assert host.index.dtype == torch.int64 and torch.equal(host.index, index)
    assert host.weights.dtype == dtype and torch.equal(host.weights, weights.to(dtype))
    assert torch.equal(host.hidden, hidden)


def test_to_host_reads_non_contiguous_inputs():
    hidden = torch.randn(8, 6).t()  # [6, 8], strided
    index = torch.arange(12).view(2, 6).t()
    weights = torch.rand(2, 6).t()
    host = to_host(hidden, index, weights)
    assert torch.equal(host.hidden, hidden) and torch.equal(host.index, index) and torch.equal(host.weights, weights)


def test_to_device_restores_the_backbone_dtype():
    out = torch.randn(3, 4)
    back = to_device(out, torch.device("cpu"), torch.bfloat16)
    assert back.dtype == torch.bfloat16 and torch.equal(back, out.to(torch.bfloat16))


def test_only_host_executors_on_an_accelerator_backbone_are_staged():
    cpu_hidden = torch.zeros(1, 4)
    accel_hidden = torch.zeros(1, 4, device="meta")  # stands in for a GPU tensor: only its device is read
    dispatching = DispatchingExecutor.__new__(DispatchingExecutor)
    assert not stages_on_host(dispatching, cpu_hidden)
    assert stages_on_host(dispatching, accel_hidden)
    assert not stages_on_host(object(), accel_hidden)  # an executor that computes on the device itself


def test_an_executor_with_experts_on_the_cpu_takes_host_tensors(tiny_model):
    executor = LocalExpertExecutor(open_weights(tiny_model("mixtral")))
    assert executor.computes_on_host and stages_on_host(executor, torch.zeros(1, 4, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the pinned, non-blocking path")
def test_to_host_from_a_gpu_equals_three_copies():
    hidden = torch.randn(9, 32, device="cuda", dtype=torch.bfloat16)
    index = torch.randint(-1, 8, (9, 2), device="cuda")
    weights = torch.rand(9, 2, device="cuda")
    host = to_host(hidden, index, weights)
    assert host.hidden.is_pinned()
    assert torch.equal(host.hidden, hidden.cpu()) and torch.equal(host.index, index.cpu())
    assert torch.equal(host.weights, weights.to(torch.bfloat16).cpu())
    back = to_device(host.hidden, hidden.device, torch.float32)
    assert back.device.type == "cuda" and torch.equal(back, hidden.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: backbone on it, experts on the CPU")
@pytest.mark.parametrize("arch", ARCHS)
def test_a_gpu_backbone_with_cpu_experts_matches_transformers(arch, tiny_model, reference):
    engine = LocalEngine(tiny_model(arch), device="cuda", dtype=torch.float32)
    ref = reference(arch)
    ids = engine.encode(PROMPT)
    torch.testing.assert_close(engine.prefill_logits(ids), reference_logits(ref, ids), rtol=0, atol=1e-4)
    assert engine.generate(token_ids=ids, max_new_tokens=16).token_ids == reference_generate(ref, ids, 16)
