"""Cold starts of the function layer, measured in one run on this machine.

1. One function's cold start to its first answer: Remoe's function (lazy: loads only the routed expert's
   bytes) vs a function that loads the whole checkpoint first (transformers from_pretrained), same model,
   same expert, both fresh processes.
2. TTFT of a cold request (every function scaled to zero) through `remoe up --remote-ratio 0.5`, with the
   gateway pre-warming the plan's functions when the request arrives vs without (functions then start one
   after another, as each layer first needs them).

Usage: python bench/cold_start.py [--repeats N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import MODELS, PROMPT, machine_description  # noqa: E402

from remoe.cluster import LocalCluster  # noqa: E402
from remoe.functions.config import FunctionConfig  # noqa: E402
from remoe.model.tiny import make_tiny_model  # noqa: E402
from remoe.model.tokenizer import load_tokenizer  # noqa: E402
from remoe.proto import expert_pb2  # noqa: E402
from remoe.sdk import Client  # noqa: E402
from remoe.transport import tensor_codec  # noqa: E402
from remoe.transport.expert_stream import ExpertStream  # noqa: E402

# A whole-checkpoint function: what a function that does not load lazily spends before its first answer.
WHOLE_CHECKPOINT = """
import sys, time
t0 = time.time()
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
experts = model.get_submodule(sys.argv[2])
with torch.inference_mode():
    experts(torch.randn(1, model.config.hidden_size), torch.tensor([[1]]), torch.ones(1, 1))
print(time.time() - t0)
"""


@dataclass
class FunctionRow:
    model: str
    checkpoint_mb: float
    lazy_first_answer_s: float
    lazy_breakdown: dict
    whole_checkpoint_first_answer_s: float
    ratio: float  # whole / lazy


@dataclass
class PrewarmRow:
    model: str
    functions: int
    ttft_cold_prewarm_s: float
    ttft_cold_no_prewarm_s: float
    reduction: float  # 1 - prewarm / no_prewarm


def _lazy_function_first_answer(path: Path, tmp: Path) -> tuple[float, dict]:
    ready = tmp / "fn.port"
    ready.unlink(missing_ok=True)
    config = FunctionConfig(model_dir=path, experts=[(0, 1), (0, 2)], name="bench", port=0, ready_file=ready)
    start = time.time()
    env = {**os.environ, **config.to_env(), "OMP_NUM_THREADS": "1", "REMOE_SPAWNED_AT": repr(start)}
    proc = subprocess.Popen([sys.executable, "-m", "remoe.functions.expert"], env=env, stderr=subprocess.DEVNULL)
    try:
        while not ready.is_file():
            if proc.poll() is not None:
                raise RuntimeError("the function exited while starting")
            time.sleep(0.005)
        stream = ExpertStream(f"127.0.0.1:{ready.read_text()}")
        hidden = torch.randn(1, int(json.loads((path / "config.json").read_text())["hidden_size"]))
        batch = expert_pb2.ExpertBatch(
            layer=0,
            hidden_states=tensor_codec.encode(hidden),
            top_k_index=tensor_codec.encode(torch.tensor([[1]])),
            top_k_weights=tensor_codec.encode(torch.ones(1, 1)),
        )
        result = stream.submit(batch)[1].result(timeout=300)
        elapsed = time.time() - start
        assert result.status_code == 0, result.error
        fields = stream.stats(10).cold_start.ListFields()
        breakdown = {f.name: round(v, 3) for f, v in fields if f.name != "complete"}
        stream.close()
        return elapsed, breakdown
    finally:
        proc.terminate()
        proc.wait()


def _whole_checkpoint_first_answer(path: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    subprocess.run(
        [sys.executable, "-c", WHOLE_CHECKPOINT, str(path), "model.layers.0.mlp.experts"],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.time() - start


def bench_function(name: str, path: Path, tmp: Path, repeats: int) -> FunctionRow:
    lazy = [_lazy_function_first_answer(path, tmp) for _ in range(repeats)]
    whole = [_whole_checkpoint_first_answer(path) for _ in range(repeats)]
    lazy_s = statistics.median(t for t, _ in lazy)
    whole_s = statistics.median(whole)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20
    return FunctionRow(
        name, round(size, 1), round(lazy_s, 2), lazy[0][1], round(whole_s, 2), round(whole_s / lazy_s, 2)
    )


def _cold_ttft(path: Path, prewarm: bool) -> tuple[float, int]:
    ids = load_tokenizer(path).encode(PROMPT)
    # Requests wait for cold starts here (the `wait` policy): this measures what pre-warming saves a bare
    # serverless deployment; by default Remoe computes a starting function's batches on an expert service instead.
    env = {"REMOE_BACKBONE_FUNCTION_COLD_START": "wait"}
    with LocalCluster(path, port=0, remote_ratio=0.5, prewarm=prewarm, env=env) as cluster:
        client = Client(cluster.address)
        start = time.perf_counter()
        next(iter(client.stream(token_ids=ids, max_new_tokens=1)))
        ttft = time.perf_counter() - start
        functions = len({f.function for f in client.status().backbone.functions})
    return ttft, functions


def bench_prewarm(name: str, path: Path, repeats: int) -> PrewarmRow:
    with_prewarm = [_cold_ttft(path, True) for _ in range(repeats)]
    without = [_cold_ttft(path, False) for _ in range(repeats)]
    a = statistics.median(t for t, _ in with_prewarm)
    b = statistics.median(t for t, _ in without)
    return PrewarmRow(name, with_prewarm[0][1], round(a, 2), round(b, 2), round(1 - a / b, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = {name: make_tiny_model(spec, tmp / name) for name, spec in MODELS.items()}
        function_rows = [bench_function(name, path, tmp, args.repeats) for name, path in paths.items()]
        prewarm_rows = [bench_prewarm("tiny", paths["tiny"], args.repeats)]

    machine = machine_description()
    lines = [
        "# Function cold starts (CPU, loopback)",
        "",
        f"Machine: {machine}. One run; medians of {args.repeats}. Every process is new (imports included).",
        "",
        "## A function's cold start to its first answer: lazy single-expert loading vs the whole checkpoint",
        "",
        "| model | checkpoint (MiB) | Remoe function, lazy (s) | whole checkpoint (s) | whole / lazy |",
        "|---|---|---|---|---|",
        *[
            f"| {r.model} | {r.checkpoint_mb} | {r.lazy_first_answer_s} | {r.whole_checkpoint_first_answer_s} "
            f"| {r.ratio} |"
            for r in function_rows
        ],
        "",
        "Remoe function breakdown (first run, seconds): "
        + "; ".join(f"{r.model}: {r.lazy_breakdown}" for r in function_rows),
        "",
        "## TTFT of a cold request (all functions at zero), `remoe up --remote-ratio 0.5`",
        "",
        "| model | functions | with pre-warm (s) | without (s) | reduction |",
        "|---|---|---|---|---|",
        *[
            f"| {r.model} | {r.functions} | {r.ttft_cold_prewarm_s} | {r.ttft_cold_no_prewarm_s} | {r.reduction:.0%} |"
            for r in prewarm_rows
        ],
        "",
        "The paper reports 47% lower cold start from overlapping function cold starts with the main model's.",
        "Here the backbone is already running, so the overlap is among the functions themselves (started together",
        "instead of one after another as each layer first needs them), on two cores shared by every process.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start.md").write_text(table)
    (args.out / "cold_start.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "function": [asdict(r) for r in function_rows],
                "prewarm": [asdict(r) for r in prewarm_rows],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
