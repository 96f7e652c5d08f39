"""Build a one-expert instance of an architecture's own experts class around tensors we already hold.

The class is transformers' (MixtralExperts, GptOssExperts, ...), so biases, transposed layouts and custom
gates (GPT-OSS's clamped SwiGLU) are its math. Parameters are views `[1, ...]` of the expert's tensors: no copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# The class's own forward ("eager"): for one expert it is a single gather + two matmuls, measured faster on
# CPU than grouped_mm here (bench/engine.py); both agree with the reference to float32 rounding.
DEFAULT_IMPLEMENTATION = "eager"


class ExpertModuleFactory:
    """Makes one-expert modules of the same class and config as a (meta) experts module."""

    def __init__(self, template: nn.Module, implementation: str = DEFAULT_IMPLEMENTATION) -> None:
        self._cls = type(template)
        self._config = copy.deepcopy(template.config)
        self._config._experts_implementation = implementation
        self.param_names = [name for name, _ in template.named_parameters(recurse=False)]

    def build(self, tensors: dict[str, torch.Tensor]) -> nn.Module:
        if set(tensors) != set(self.param_names):
            raise ValueError(f"expert tensors {sorted(tensors)} do not match {self._cls.__name__} {self.param_names}")
        with torch.device("meta"):
            module = self._cls(self._config)
        for name, tensor in tensors.items():
            setattr(module, name, nn.Parameter(tensor.unsqueeze(0), requires_grad=False))
        module.num_experts = 1
        return module.eval()


def run_expert(module: nn.Module, hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted output of one expert for its routed rows.

    hidden: [N, H] rows routed to this expert; weights: [N] their router weights. Returns [N, H].
    """
    index = torch.zeros(hidden.shape[0], 1, dtype=torch.long, device=hidden.device)  # [N, 1]
    return module(hidden, index, weights.unsqueeze(1))
