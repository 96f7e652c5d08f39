"""The GPU backbone's one-copy staging of a layer's tensors: packing and views are exact (run on the CPU)."""

import pytest
import torch

from remoe.experts.dispatch import DispatchingExecutor
from remoe.model.host_staging import stages_on_host, to_device, to_host


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
