"""A backbone tensor that transformers converts on load rather than renames: separate q/k/v conv weights merged
into one, one fused `in_proj` split into several. Remoe runs transformers' own `WeightConverter` on the
checkpoint tensors, the way `from_pretrained` does, so the result is the same tensors it would load.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from transformers.core_model_loading import WeightConverter, dot_natural_key

from remoe.checkpoint.files import Checkpoint


@dataclass
class BackboneConversion:
    converter: WeightConverter  # the mapping's converter (copied per read: it collects tensors as it goes)
    first_target: str  # the model name the sources were renamed to (transformers' `layer_name`)
    sources: list[tuple[str, str]] = field(default_factory=list)  # (source pattern, checkpoint key)

    @property
    def targets(self) -> list[str]:
        """The model tensors the conversion makes (one per target pattern)."""
        first = self.converter.target_patterns[0]
        return [self.first_target.replace(first, pattern) for pattern in self.converter.target_patterns]

    def keys(self) -> list[str]:
        return [key for _, key in self.sources]

    def read(self, ckpt: Checkpoint, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        converter = copy.deepcopy(self.converter)
        for pattern, key in sorted(self.sources, key=lambda s: dot_natural_key(s[1])):  # from_pretrained's order
            converter.add_tensor(self.first_target, key, pattern, lambda key=key: ckpt.read(key))
        out = converter.convert(self.first_target, model=model, config=model.config)
        return {name: (value[0] if isinstance(value, list) else value) for name, value in out.items()}
