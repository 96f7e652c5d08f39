"""Which expert-math family an experts module belongs to, read off the module itself (never its name).

The gated-MLP family is `down(act(x gate^T) * (x up^T))` per expert, weighted by the router and summed:
Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3 and most others. A module is in it when transformers' experts
interface says so (a gate, no bias, gate rows then up rows, not transposed, no post-expert norm), its
parameters are exactly `gate_up_proj [2I, H]` and `down_proj [H, I]`, and — the proof — its own eager
forward on seeded random weights equals that math. Anything else (GPT-OSS's clamped SwiGLU with biases,
a class with its own twist) runs through its class.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from remoe.experts.modules import ExpertModuleFactory, run_expert

_PARAMS = {"gate_up_proj", "down_proj"}
_PROBE_ROWS = 3


@dataclass(frozen=True, slots=True)
class GatedFamily:
    """A module in the gated-MLP family: sizes and its activation (the module's own act_fn)."""

    hidden: int  # H
    intermediate: int  # I
    act: nn.Module
    act_is_silu: bool  # what the native kernel computes


def gated_math(gate_up: torch.Tensor, down: torch.Tensor, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One expert, unweighted: x [N, H], gate_up [2I, H], down [H, I] -> [N, H], with the eager module's ops."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)  # [N, I] each
    return F.linear(act(gate) * up, down)


def inspect_gated(template: nn.Module) -> GatedFamily | str:
    """The module's gated-MLP description, or the reason it is not in the family."""
    flags = {
        "has_gate": True,
        "has_bias": False,
        "is_transposed": False,
        "is_concatenated": True,
        "has_post_expert_norm": False,
    }
    for attr, want in flags.items():
        if bool(getattr(template, attr, not want)) != want:
            return f"{attr}={getattr(template, attr, None)}, the gated-MLP kernels need {want}"
    params = dict(template.named_parameters(recurse=False))
    if set(params) != _PARAMS:
        return f"parameters {sorted(params)} are not {sorted(_PARAMS)}"
    _, two_i, hidden = params["gate_up_proj"].shape
    down_shape = tuple(params["down_proj"].shape[1:])
    if two_i % 2 or down_shape != (hidden, two_i // 2):
        return f"gate_up_proj {list(params['gate_up_proj'].shape)} and down_proj do not pair up"
    act = getattr(template, "act_fn", None)
    if not isinstance(act, nn.Module):
        return "no act_fn module"
    if _required_args(act.forward) != 1:  # e.g. inkling2's act(gate, up): its own twist on the math
        return f"its act_fn {type(act).__name__} does not take one tensor"
    family = GatedFamily(hidden, two_i // 2, act, _is_silu(act))
    mismatch = _probe(template, family)
    return mismatch if mismatch else family


def _required_args(fn) -> int:
    params = inspect.signature(fn).parameters.values()
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _is_silu(act: nn.Module) -> bool:
    x = torch.linspace(-8, 8, 101)
    return torch.allclose(act(x), F.silu(x), rtol=0, atol=1e-6)


def _probe(template: nn.Module, family: GatedFamily) -> str | None:
    """Run the class's own eager forward on seeded random weights and compare with the family's math."""
    g = torch.Generator().manual_seed(0)
    h, i = family.hidden, family.intermediate
    tensors = {
        "gate_up_proj": torch.randn(2 * i, h, generator=g) / h**0.5,
        "down_proj": torch.randn(h, i, generator=g) / i**0.5,
    }
    x = torch.randn(_PROBE_ROWS, h, generator=g)
    weights = torch.rand(_PROBE_ROWS, generator=g)
    module = ExpertModuleFactory(template, "eager").build(tensors)
    with torch.inference_mode():
        expected = run_expert(module, x, weights)
        got = gated_math(tensors["gate_up_proj"], tensors["down_proj"], family.act, x) * weights[:, None]
    if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
        err = (got - expected).abs().max().item()
        return f"its eager forward differs from the gated-MLP math (max error {err:.2e})"
    return None
