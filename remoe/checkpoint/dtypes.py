"""The dtype a model runs in: what the user asked for, else the checkpoint's own (as from_pretrained's dtype="auto")."""

from __future__ import annotations

import torch

# safetensors dtype names (header "dtype") of the float types MoE checkpoints use.
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(config, dtype: torch.dtype | str | None) -> torch.dtype:
    """Like from_pretrained's default dtype="auto": the checkpoint's own dtype, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
        return _DTYPES[dtype]
    stored = getattr(config, "dtype", None)
    if isinstance(stored, str):
        stored = _DTYPES.get(stored.removeprefix("torch."))
    return stored if isinstance(stored, torch.dtype) else torch.float32
