"""The experts record: what a function needs to serve a checkpoint's routed experts without transformers.

`remoe split` keeps these facts in its manifest (the experts' math and shapes; the keys follow from the split's
layout). An original Hugging Face checkpoint has no such file, and its expert keys follow the architecture's
own conventions, which only transformers' conversion rules tell. So the backbone, which has the model open
anyway, writes this record for its local functions: the math, the shapes, and where each layer's expert
tensors lie (remoe/checkpoint/expert_sources.py). The runtime template and every instance then import torch
but not transformers: on the 2-core machine, seconds of CPU the template would take from the services
starting beside it (docs/results/cold_start.md).

The record names the files it describes with their size and modification time: a checkpoint changed after
it was written is opened the usual way, never read through a stale record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from remoe.checkpoint.expert_sources import ExpertSource, source_from_json
from remoe.checkpoint.manifest import ExpertsMath
from remoe.errors import CheckpointError

if TYPE_CHECKING:
    from remoe.checkpoint.weights import ModelWeights

RECORD_FILE = "experts-record.json"
FORMAT = "remoe-experts-record/1"


@dataclass(slots=True)
class RecordedLayer:
    layer: int
    sources: dict[str, dict]  # param -> an ExpertSource as JSON


@dataclass(slots=True)
class ExpertsRecord:
    format: str
    model_dir: str  # resolved: a record is only read for the checkpoint it was written for
    files: dict[str, list[int]]  # file relative to model_dir -> [size, mtime_ns] when the record was written
    experts_math: ExpertsMath
    num_experts: int
    hidden_size: int
    top_k: int
    layers: list[RecordedLayer]

    def sources(self) -> dict[tuple[int, str], ExpertSource]:
        return {(entry.layer, p): source_from_json(raw) for entry in self.layers for p, raw in entry.sources.items()}

    def stale(self) -> str | None:
        """Why the files on disk are not the ones recorded; None when they are."""
        root = Path(self.model_dir)
        for name, (size, mtime_ns) in self.files.items():
            try:
                stat = (root / name).stat()
            except OSError as e:
                return f"{root / name}: {e.strerror or e}"
            if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                return f"{root / name} changed after the experts record was written"
        return None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)  # a reader never sees half a record

    @classmethod
    def load(cls, path: str | Path) -> ExpertsRecord:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read the experts record ({e})") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not an experts record of format {FORMAT}")
        try:
            raw["experts_math"] = ExpertsMath(**raw["experts_math"])
            raw["layers"] = [RecordedLayer(**entry) for entry in raw["layers"]]
            record = cls(**raw)
            record.sources()  # every source well formed
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: malformed experts record ({e})") from e
        return record


def build_record(weights: ModelWeights) -> tuple[ExpertsRecord | None, str]:
    """The record of opened weights, or None with the reason their experts need their class."""
    from remoe.experts.recorded_math import record_experts_math

    if weights.expert_format is not None:  # its quantized parts are not the record's per-param sources
        return None, "a split with its experts stored in a reduced format: functions read its manifest instead"
    if weights.shipped is not None:  # a lean function reads files as stored; these dequantize on read
        return None, f"a checkpoint shipped quantized ({weights.shipped.label()}): `remoe split` it for lean functions"
    arch = weights.arch
    math, why = record_experts_math(arch)
    if math is None:
        return None, why
    root = Path(weights.path).resolve()
    layers, files = [], set()
    for moe in arch.moe_layers:
        sources = {p: weights.expert_source(moe.layer, p) for p in moe.param_shapes}
        layers.append(RecordedLayer(moe.layer, {p: s.to_json() for p, s in sources.items()}))
        files |= {
            weights.ckpt.info(k).file for s in sources.values() for e in range(moe.num_experts) for k in s.keys(e)
        }
    stats = {str(Path(f).resolve().relative_to(root)): Path(f).stat() for f in sorted(files)}
    record = ExpertsRecord(
        FORMAT,
        str(root),
        {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()},
        math,
        arch.num_experts,
        arch.hidden_size,
        arch.top_k,
        layers,
    )
    return record, why


def write_record(weights: ModelWeights, directory: Path) -> tuple[Path | None, str]:
    """Write the record of `weights` into `directory`: its path, or None with the reason there is none."""
    record, why = build_record(weights)
    if record is None:
        return None, why
    path = directory / RECORD_FILE
    record.save(path)
    return path, why
