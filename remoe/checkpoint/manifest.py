"""`manifest.json` of a split model directory: what the scheduler's cost model and the expert hosts read."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from remoe.checkpoint.quantized import ExpertFormat
from remoe.errors import CheckpointError

MANIFEST_FILE = "manifest.json"
FORMAT = "remoe-split/1"
GATED_SILU = "gated_silu"  # down(silu(x gate^T) * (x up^T)) per expert, gate rows then up rows in gate_up_proj


def split_expert_key(layer: int, expert: int, param: str) -> str:
    return f"layers.{layer}.experts.{expert}.{param}"


@dataclass(slots=True)
class ExpertsMath:
    """How every routed expert computes, proven at split time against the experts class's own eager forward
    (remoe/experts/recorded_math.py), so a function can serve the split without importing transformers."""

    family: str  # GATED_SILU (the only family recorded so far)
    param_shapes: dict[str, list[int]]  # one expert's tensors, without the E dim: {"gate_up_proj": [2I, H], ...}


@dataclass(slots=True)
class LayerExperts:
    layer: int  # decoder layer index
    file: str  # relative to the split directory; keys are "{expert}.{param}"
    expert_bytes: list[int]  # exact tensor-data bytes of each expert


@dataclass(slots=True)
class Manifest:
    architecture: str  # e.g. "MixtralForCausalLM"
    model_type: str
    num_hidden_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    dtype: str  # the checkpoint's expert dtype, e.g. "float32" (what `expert_format` was made from)
    backbone_file: str
    backbone_bytes: int  # exact tensor-data bytes of the backbone (tied weights once)
    kv_cache_bytes_per_token: int
    layers: list[LayerExperts] = field(default_factory=list)
    format: str = FORMAT
    experts_math: ExpertsMath | None = None  # None: the experts need their class (or a split made before it)
    expert_format: ExpertFormat | None = None  # None: experts as the checkpoint stores them (exact)
    # the original checkpoint's own quantization (ShippedQuantization.label()), stored here dequantized
    shipped_quantization: str | None = None

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise CheckpointError(f"manifest format {self.format!r} is not {FORMAT!r}")
        for entry in self.layers:
            if len(entry.expert_bytes) != self.num_experts:
                raise CheckpointError(f"manifest: layer {entry.layer} lists {len(entry.expert_bytes)} experts")

    @property
    def moe_layers(self) -> list[int]:
        return [entry.layer for entry in self.layers]

    @property
    def experts_bytes(self) -> int:
        return sum(sum(entry.expert_bytes) for entry in self.layers)

    def layer(self, layer: int) -> LayerExperts:
        for entry in self.layers:
            if entry.layer == layer:
                return entry
        raise KeyError(f"layer {layer} has no routed experts (MoE layers: {self.moe_layers})")

    def save(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def expert_format_label(cls, directory: Path) -> str:
        """ "" for an original checkpoint or an exact split; else how the split stores its experts."""
        if not (Path(directory) / MANIFEST_FILE).is_file():
            return ""
        fmt = cls.load(Path(directory)).expert_format
        return fmt.label() if fmt is not None else ""

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
            raw["layers"] = [LayerExperts(**entry) for entry in raw["layers"]]
            if raw.get("experts_math") is not None:
                raw["experts_math"] = ExpertsMath(**raw["experts_math"])
            if raw.get("expert_format") is not None:
                raw["expert_format"] = ExpertFormat(**raw["expert_format"])
            return cls(**raw)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: not found (is {directory} a `remoe split` output?)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: corrupt manifest ({e})") from e
