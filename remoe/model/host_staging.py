"""One copy each way between an accelerator backbone and experts computed on the host.

A GPU backbone whose experts run on the CPU (in-process or in expert services) moves three tensors to the
host per MoE layer (hidden states, routing ids, routing weights) and the output back. Three synchronous
`.cpu()` calls wait for the device three times; the activation recorder's `.cpu()` waited a fourth. Here the
three are packed into one byte buffer on the device (one cat), copied once into pinned host memory without
blocking, and waited for once; the output goes back from pinned memory without blocking (the caching host
allocator keeps the buffer until the copy has run). On a CPU backbone nothing is copied.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class HostRouting(NamedTuple):
    """A layer's inputs on the host: views into one (pinned) buffer."""

    hidden: torch.Tensor  # [T, H]
    index: torch.Tensor  # [T, K] int64
    weights: torch.Tensor  # [T, K], the hidden states' dtype


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def to_host(hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, pin: bool = True) -> HostRouting:
    """`hidden` [T, H], `index` [T, K], `weights` [T, K] from their device to the host in one copy.

    The ids go first (8-byte elements at offset 0), then the weights and the hidden states (both of the
    hidden dtype), so every view starts at an offset its element size divides."""
    t, h = hidden.shape
    k = index.shape[1]
    index = index.to(torch.int64)
    weights = weights.to(hidden.dtype)
    packed = torch.cat([_bytes(index), _bytes(weights), _bytes(hidden)])  # one kernel on the device
    pin = pin and packed.device.type == "cuda"
    host = torch.empty(packed.numel(), dtype=torch.uint8, pin_memory=pin)
    host.copy_(packed, non_blocking=pin)
    if pin:
        torch.cuda.current_stream(packed.device).synchronize()  # the one wait: the copy has landed
    n_index, n_weights = 8 * t * k, hidden.element_size() * t * k
    return HostRouting(
        hidden=host[n_index + n_weights :].view(hidden.dtype).view(t, h),
        index=host[:n_index].view(torch.int64).view(t, k),
        weights=host[n_index : n_index + n_weights].view(hidden.dtype).view(t, k),
    )


def to_device(out: torch.Tensor, device: torch.device, dtype: torch.dtype, pin: bool = True) -> torch.Tensor:
    """The experts' output [T, H] back to `device` without blocking the host (from pinned memory)."""
    out = out.to(dtype)
    pin = pin and device.type == "cuda"
    if pin and not out.is_pinned():
        out = torch.empty_like(out, pin_memory=True).copy_(out)
    return out.to(device, non_blocking=pin)


def stages_on_host(executor: object, hidden: torch.Tensor) -> bool:
    """Whether a layer's tensors should cross to the host once, here, before the executor sees them."""
    return hidden.device.type != "cpu" and bool(getattr(executor, "computes_on_host", False))
