"""LocalEngine vs transformers' generate, tokens/s, measured in the same run on this machine.

Usage: python bench/engine.py [--new-tokens N] [--repeats R] [--out docs/results]
Writes engine.json and engine.md under --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from remoe.machine import machine_description
from remoe.model.engine import LocalEngine
from remoe.model.tiny import TinySpec, make_tiny_model

MODELS = {
    "tiny": TinySpec("mixtral", layers=4, experts=8, top_k=2, hidden=64),
    "medium": TinySpec("mixtral", layers=8, experts=8, top_k=2, hidden=512, vocab=2048),
}
PROMPT = "Explain how a hash table works, and why its lookups take constant time on average."


@dataclass
class Row:
    model: str
    params_m: float
    hf_tok_s: float
    remoe_tok_s: float
    ratio: float  # remoe / hf
    tokens_equal: bool


def _best_tok_s(fn, new_tokens: int, repeats: int) -> tuple[float, list[int]]:
    fn()  # warm-up: first-use loading and allocator growth are not steady-state speed
    times, out = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return new_tokens / statistics.median(times), out


def bench_model(name: str, spec: TinySpec, workdir: Path, new_tokens: int, repeats: int) -> Row:
    path = make_tiny_model(spec, workdir / name)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = LocalEngine(path, device="cpu")
    ids = engine.encode(PROMPT)

    def hf():
        with torch.inference_mode():
            out = ref.generate(
                torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return out[0, len(ids) :].tolist()

    def remoe():
        return engine.generate(token_ids=ids, max_new_tokens=new_tokens, stop_on_eos=False).token_ids

    hf_rate, hf_out = _best_tok_s(hf, new_tokens, repeats)
    remoe_rate, remoe_out = _best_tok_s(remoe, new_tokens, repeats)
    params = sum(p.numel() for p in ref.parameters()) / 1e6
    return Row(
        name,
        round(params, 1),
        round(hf_rate, 1),
        round(remoe_rate, 1),
        round(remoe_rate / hf_rate, 3),
        hf_out == remoe_out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()

    machine = machine_description()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_model(name, spec, Path(tmp), args.new_tokens, args.repeats) for name, spec in MODELS.items()]

    lines = [
        f"# LocalEngine vs transformers generate (batch 1, greedy, {args.new_tokens} new tokens, float32, CPU)",
        "",
        f"Machine: {machine}. Median of {args.repeats} runs after a warm-up; both measured in the same run.",
        "",
        "| model | params (M) | transformers tok/s | LocalEngine tok/s | ratio | same tokens |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.model} | {r.params_m} | {r.hf_tok_s} | {r.remoe_tok_s} | {r.ratio} | {r.tokens_equal} |" for r in rows
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine.md").write_text(table)
    (args.out / "engine.json").write_text(
        json.dumps({"machine": machine, "new_tokens": args.new_tokens, "rows": [asdict(r) for r in rows]}, indent=2)
    )


if __name__ == "__main__":
    main()
