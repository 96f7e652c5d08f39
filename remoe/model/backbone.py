"""The backbone: the unmodified transformers model, minus its routed-expert weights.

A Remoe experts implementation is registered in transformers' experts interface; every experts module of
the model dispatches to it, and it hands `(layer, hidden_states, top_k_index, top_k_weights)` to an
ExpertExecutor. Router, attention, shared experts, KV cache and generation stay transformers' own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.integrations.moe import ExpertsInterface

from remoe.checkpoint.architecture import Architecture
from remoe.checkpoint.weights import ModelWeights
from remoe.errors import CheckpointError
from remoe.experts.executor import ExpertExecutor
from remoe.model.activations import current_recorder, observe_rows
from remoe.model.host_staging import stages_on_host, to_device, to_host
from remoe.transport.request_context import current_batch, row_starts

EXPERTS_IMPLEMENTATION = "remoe"


@dataclass(slots=True)
class _LayerBinding:
    layer: int
    executor: ExpertExecutor


def _remoe_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    binding: _LayerBinding | None = getattr(self, "remoe_binding", None)
    if binding is None:
        raise RuntimeError(f"{type(self).__name__} uses the Remoe experts implementation but has no executor bound")
    staged = stages_on_host(binding.executor, hidden_states)  # an accelerator backbone, experts on the host
    hidden, index, weights = hidden_states, top_k_index, top_k_weights
    if staged:
        hidden, index, weights = to_host(hidden_states, top_k_index, top_k_weights)
    batch = current_batch.get()
    if batch is None:
        recorder = current_recorder.get()
        if recorder is not None:
            recorder.observe(binding.layer, index)
    else:  # a batched step: each request counts its own rows
        sizes = [group.stop - start for start, group in zip(row_starts(batch), batch, strict=True)]
        observe_rows(binding.layer, index, sizes, [group.recorder for group in batch])
    out = binding.executor.compute(binding.layer, hidden, index, weights)  # [T, H]
    return to_device(out, hidden_states.device, hidden_states.dtype) if staged else out


ExpertsInterface.register(EXPERTS_IMPLEMENTATION, _remoe_experts_forward)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Backbone:
    """The model's non-expert part on `device`, with every MoE layer bound to `executor`."""

    def __init__(
        self,
        weights: ModelWeights,
        executor: ExpertExecutor,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        self.arch = Architecture.from_config(weights.config, dtype, experts_implementation=EXPERTS_IMPLEMENTATION)
        self.model: PreTrainedModel = self.arch.skeleton
        fmt = weights.expert_format
        self.expert_format = fmt.label() if fmt is not None else ""  # "": experts exact, as the checkpoint has them
        _load_backbone_weights(self.model, weights, self.arch, self.device, dtype)
        self.bind(executor)

    def bind(self, executor: ExpertExecutor) -> None:
        """Route every MoE layer to `executor` (e.g. to switch placements between requests)."""
        self.executor = executor
        for moe in self.arch.moe_layers:
            self.model.get_submodule(moe.path).remoe_binding = _LayerBinding(moe.layer, executor)

    def param_bytes(self) -> int:
        """Bytes of materialised parameters (tied weights once): routed experts count zero here."""
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if p.device.type != "meta" and p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.nbytes
        return total


@torch.no_grad()
def _load_backbone_weights(
    model: PreTrainedModel, weights: ModelWeights, arch: Architecture, device: torch.device, dtype: torch.dtype
) -> None:
    state = {}
    for name, tensor in weights.backbone_tensors():
        target = model.get_parameter_or_buffer(name)
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{weights.path}: {name} has shape {tuple(tensor.shape)}, the config implies {tuple(target.shape)}"
            )
        # Keep float tensors in the model dtype; integer buffers keep theirs.
        state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    model.load_state_dict(state, strict=False, assign=True)
    # Tensors used in place (CPU, the stored dtype) keep their file's map alive; copies (an accelerator, another
    # dtype) leave the map unused once this returns, and its pages were held as file-backed memory for nothing.
    weights.ckpt.release_maps()
    expert_params = arch.expert_param_paths()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name in state or name in expert_params:
            tensor._is_hf_initialized = True  # tells transformers' init to leave it alone
    # Non-persistent buffers (rotary inv_freq, ...) are not in checkpoints: transformers' own init computes them.
    for name, buffer in model.named_non_persistent_buffers():
        module_name, _, buffer_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        module.register_buffer(buffer_name, torch.empty_like(buffer, device=device), persistent=False)
    model.tie_weights()
    model.initialize_weights()
    stray = [
        n
        for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
        if t.device.type == "meta" and n not in expert_params
    ]
    if stray:
        raise CheckpointError(f"{weights.path}: backbone tensors left unloaded: {stray[:5]}")
