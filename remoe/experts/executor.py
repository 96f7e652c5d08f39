"""ExpertExecutor: what the backbone hands each MoE layer's routed tokens to.

T = tokens, K = top-k, H = hidden size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import torch

from remoe.constants import GUEST_IDLE_S
from remoe.errors import CheckpointError, RemoeError
from remoe.experts.cache import CacheStats, ExpertCache, ExpertId
from remoe.experts.kernels import ExpertKernel, choose_kernel, kernel_for_family
from remoe.experts.kernels.select import for_stored_format
from remoe.experts.modules import DEFAULT_IMPLEMENTATION
from remoe.experts.recorded_math import recorded_family

if TYPE_CHECKING:  # at run time any weights with the same surface do (a lean function's carry no transformers)
    from remoe.checkpoint.weights import ModelWeights


class ExpertExecutor(Protocol):
    def compute(
        self, layer: int, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states [T, H], top_k_index [T, K], top_k_weights [T, K] -> weighted expert sum [T, H].

        An index of -1 marks a slot that another destination serves; it contributes nothing here.
        """
        ...

    # Optional: `computes_on_host` true means an accelerator backbone copies a layer's tensors to the host once
    # (pinned, one wait) before `compute` and the output back without blocking (remoe/model/host_staging.py).


class ExpertNotHostedError(RemoeError):
    """Tokens were routed to an executor that does not host their expert."""


class LocalExpertExecutor:
    """Hosts a subset of experts in this process, loading each on first use and evicting by LRU.

    Each MoE layer has one kernel (remoe.experts.kernels), chosen from its experts module: an expert is
    prepared for it once at load (layout, dtype, anonymous memory; the budget counts those bytes), and a
    batch's experts in a layer are computed in one kernel call. `kernel` asks for one (default auto).
    Experts a split stores in a reduced format (`remoe split --expert-dtype`) stay in it where the native kernel
    serves the layer, and are widened at load otherwise.
    """

    def __init__(
        self,
        weights: ModelWeights,
        hosted: Iterable[ExpertId] | None = None,
        budget_bytes: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        implementation: str = DEFAULT_IMPLEMENTATION,
        kernel: str = "auto",
        guest_idle_s: float = GUEST_IDLE_S,
    ) -> None:
        self.weights = weights
        self.dtype = dtype
        self.device = torch.device(device)
        arch = weights.arch
        self.hosted: frozenset[ExpertId] = frozenset(
            hosted if hosted is not None else ((m.layer, e) for m in arch.moe_layers for e in range(m.num_experts))
        )
        self.stored_format = getattr(weights, "expert_format", None)  # None: as the checkpoint stores them
        self.kernels: dict[int, ExpertKernel] = {}
        self.kernel_reasons: dict[int, str] = {}  # layer -> which kernel and why (remoe inspect, logs)
        recorded = getattr(arch, "experts_math", None)  # a lean function's weights: the split's record, no class
        if recorded is not None and (self.device.type != "cpu" or kernel == "class"):
            raise ValueError("weights opened without their experts class compute on the CPU with the family kernels")
        for m in arch.moe_layers:
            if recorded is not None:
                chosen, why = kernel_for_family(recorded_family(recorded), dtype, kernel)
                why += " (from the split's record)"
            elif self.device.type == "cpu":
                chosen, why = choose_kernel(arch.experts_module(m.layer), dtype, kernel, implementation)
            else:  # an accelerator computes through the class (the CPU kernels do not apply)
                chosen, why = choose_kernel(arch.experts_module(m.layer), dtype, "class", implementation)
            if self.stored_format is not None:
                chosen, why = for_stored_format(chosen, why, self.stored_format, dtype, self.device)
            self.kernels[m.layer], self.kernel_reasons[m.layer] = chosen, why
        self.cache: ExpertCache = ExpertCache(self._load, budget_bytes, guest_idle_s)

    @property
    def computes_on_host(self) -> bool:
        """Experts on the CPU: an accelerator backbone hands it host tensors, copied once (model/host_staging.py)."""
        return self.device.type == "cpu"

    @property
    def stats(self) -> CacheStats:
        return self.cache.stats

    def _load(self, expert: ExpertId) -> tuple[object, int]:
        layer, index = expert
        shapes = self.weights.arch.moe_layer(layer).param_shapes
        tensors = {}
        for name, t in self.weights.read_expert(layer, index).items():
            if tuple(t.shape) != shapes[name]:
                raise CheckpointError(
                    f"{self.weights.path}: layer {layer} expert {index} {name} has shape {tuple(t.shape)}, "
                    f"the config implies {shapes[name]}"
                )
            # a reduced format stays as stored: its kernel packs or widens it
            tensors[name] = t if self.stored_format is not None else t.to(device=self.device, dtype=self.dtype)
        return self.kernels[layer].prepare(tensors)

    def preload(self, layer: int, expert: int) -> None:
        """Load a hosted expert now (warm-up) instead of at its first use."""
        if (layer, expert) not in self.hosted:
            raise ExpertNotHostedError(f"layer {layer} expert {expert} is not hosted by this executor")
        self.cache.get((layer, expert))

    @torch.inference_mode()
    def compute(
        self,
        layer: int,
        hidden_states: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
        guest: bool = False,
    ) -> torch.Tensor:
        """As ExpertExecutor.compute; `guest`: the experts are another destination's, kept only while used."""
        out_device, out_dtype = hidden_states.device, hidden_states.dtype
        hidden = hidden_states.to(self.device, self.dtype)  # [T, H]
        index = top_k_index.to(self.device)  # [T, K]
        weights = top_k_weights.to(self.device, self.dtype)  # [T, K]
        experts = {}  # expert -> its prepared weights; held here, so an eviction meanwhile frees nothing in use
        for expert in set(index.flatten().tolist()):  # cheaper than torch.unique at decode sizes
            if expert < 0:
                continue  # a slot served by another destination
            if (layer, expert) not in self.hosted:
                raise ExpertNotHostedError(f"layer {layer} expert {expert} is not hosted by this executor")
            experts[expert] = self.cache.get((layer, expert), guest)
        out = self.kernels[layer].compute(experts, hidden, index, weights)  # [T, H]
        del experts  # so that a guest released now frees its memory at once
        self.cache.release_idle_guests()  # those no batch used for guest_idle_s
        return out.to(out_device, out_dtype)
