"""A model directory's shape and MoE layer indices, read in a child process so the scheduler never imports
torch or transformers: it plans from these numbers and a forecast, and the libraries it would need only to open
the checkpoint (a meta skeleton) held ~0.3 GB for as long as it served. `python -m remoe.scheduler.shape_probe
MODEL_DIR` prints them as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from remoe.errors import CheckpointError
from remoe.scheduler.shape import ModelShape

_TIMEOUT_S = 600  # imports plus headers: seconds on a small machine; this bounds a hung filesystem


@dataclass(frozen=True, slots=True)
class ModelFacts:
    shape: ModelShape
    layer_indices: list[int]  # the MoE layers, in order
    resolved_path: str  # the directory, absolute (the plan cache's model id hashes it)


def facts_of_model(model_dir: str | Path) -> ModelFacts:
    """The facts of `model_dir`, read by a child process; CheckpointError with its message when it cannot."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "remoe.scheduler.shape_probe", str(model_dir)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise CheckpointError(f"{model_dir}: reading the model's shape took over {_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise CheckpointError(lines[-1] if lines else f"{model_dir}: reading the model's shape failed")
    raw = json.loads(done.stdout)
    return ModelFacts(ModelShape(**raw["shape"]), list(raw["layer_indices"]), raw["resolved_path"])


def main(argv: list[str] | None = None) -> int:
    from remoe.checkpoint.weights import open_weights
    from remoe.scheduler.shape import shape_of_model

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m remoe.scheduler.shape_probe MODEL_DIR  (prints its shape as JSON)", file=sys.stderr)
        return 2
    model_dir = args[0]
    try:
        weights = open_weights(model_dir)
        shape = shape_of_model(model_dir)
    except CheckpointError as e:
        print(e, file=sys.stderr)
        return 2
    out = {"shape": shape.as_dict(), "layer_indices": list(weights.arch.layer_indices)}
    print(json.dumps({**out, "resolved_path": str(weights.path.resolve())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
