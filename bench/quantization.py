"""What quantized experts cost in quality, and what they buy in bytes and speed: `remoe split --expert-dtype int8`
and `int4` (group 128) against the exact split of the same checkpoint, in one run.

Models: the trained tiny MoE (data/models/trained-qwen3 from `make bench-predictor`, else the evaluation's 8-minute
training run, cached) and the evaluation's
medium random-init qwen3_moe (6 layers x 32 experts, hidden 512). Prompts: the corpus's held-out split
(data/corpus/test.jsonl). For each model and format, through LocalEngine on the CPU (the native kernels):
- greedy agreement: the exact model's greedy continuation of each prompt (200 tokens, EOS ignored) is fed to the
  quantized model; `top-1 agreement` is the share of those positions where its own greedy choice is the same
  token (teacher-forced, so one early difference does not decide the rest); `identical` is the share of prompts
  whose free-running greedy 200 tokens equal the exact model's, and `first difference` the mean position of the
  first differing token (200 when none);
- KL: mean KL(exact || quantized) of the next-token distributions over those positions;
- perplexity on held-out prompts (every next-token prediction of each prompt, up to 128 tokens), and its ratio
  to the exact model's;
- multiple-choice accuracy: a 4-way task made from held-out prompts (their first 60% of words; the true rest, or
  the rest of three other prompts), run by lm-evaluation-harness against `remoe up`'s OpenAI API;
- decode time per token (LocalEngine, formats alternated in rounds, median) and the experts' bytes as stored.
First, while the machine is otherwise idle, the expert kernels at DeepSeek-V2-Lite's shape against the read
bandwidth (bench/quantized_kernels.py, which also writes its own files): the speed side of the same run.

The medium model decodes ~10x slower here, so it gets fewer prompts and tokens (--medium-*; said in the table).

Usage: python bench/quantization.py [--prompts 100] [--tokens 200] [--ppl-prompts 200] [--mc 100] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import quantized_kernels  # noqa: E402
from bench.evaluation.models import ModelCase, corpus, medium, tiny  # noqa: E402
from remoe.checkpoint.manifest import Manifest  # noqa: E402
from remoe.corpus.build import read_prompts  # noqa: E402
from remoe.machine import machine_description  # noqa: E402
from remoe.model.engine import LocalEngine  # noqa: E402
from remoe.model.split import split_checkpoint  # noqa: E402

CACHE = Path(".cache/bench/quantization")
FORMATS = ["same", "int8", "int4"]
GROUP = 128
PROMPT_TOKENS = 64  # prompts are cut to this many tokens before the continuation
PPL_TOKENS = 128


def splits(case: ModelCase) -> dict[str, Path]:
    out = {}
    for fmt in FORMATS:
        path = CACHE / case.path.name / fmt
        if not (path / "manifest.json").is_file():
            split_checkpoint(case.path, path, progress=False, expert_dtype=fmt, group_size=GROUP)
        out[fmt] = path
    return out


def _kl(exact_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(exact || other) per row, [N]."""
    p = torch.log_softmax(exact_logits.double(), dim=-1)
    q = torch.log_softmax(logits.double(), dim=-1)
    return (p.exp() * (p - q)).sum(dim=-1)


def agreement(engines: dict, prompts: list[list[int]], tokens: int) -> dict[str, dict]:
    exact = engines["same"]
    totals = {fmt: {"agree": 0.0, "kl": 0.0, "identical": 0, "first": []} for fmt in engines}
    positions = 0
    for ids in tqdm(prompts, desc="agreement", leave=False):
        cont = exact.generate(token_ids=ids, max_new_tokens=tokens, stop_on_eos=False).token_ids
        sequence = ids + cont
        rows = torch.arange(len(ids) - 1, len(sequence) - 1)  # the positions predicting cont
        ref = exact.prefill_logits(sequence)[rows]  # once per prompt, for every format
        positions += len(cont)
        for fmt, engine in engines.items():
            got = ref if engine is exact else engine.prefill_logits(sequence)[rows]
            own = cont
            if engine is not exact:
                own = engine.generate(token_ids=ids, max_new_tokens=tokens, stop_on_eos=False).token_ids
            diff = next((i for i, (a, b) in enumerate(zip(own, cont, strict=True)) if a != b), tokens)
            t = totals[fmt]
            t["agree"] += float((got.argmax(dim=-1) == torch.tensor(cont)).sum())
            t["kl"] += float(_kl(ref, got).sum())
            t["first"].append(diff)
            t["identical"] += diff == tokens
    return {
        fmt: {
            "top1_agreement": t["agree"] / positions,
            "kl": t["kl"] / positions,
            "identical": t["identical"] / len(prompts),
            "first_difference": statistics.mean(t["first"]),
        }
        for fmt, t in totals.items()
    }


def perplexity(engines: dict, texts: list[list[int]]) -> dict[str, dict]:
    exact = engines["same"]
    totals = {fmt: {"nll": 0.0, "kl": 0.0} for fmt in engines}
    n = 0
    for ids in tqdm(texts, desc="perplexity", leave=False):
        target = torch.tensor(ids[1:])
        ref = exact.prefill_logits(ids)[:-1]  # [T-1, V], once per text
        n += len(target)
        for fmt, engine in engines.items():
            logits = ref if engine is exact else engine.prefill_logits(ids)[:-1]
            logp = torch.log_softmax(logits.double(), dim=-1)
            totals[fmt]["nll"] -= float(logp[torch.arange(len(target)), target].sum())
            totals[fmt]["kl"] += float(_kl(ref, logits).sum())
    return {
        fmt: {"perplexity": math.exp(t["nll"] / n), "heldout_kl": t["kl"] / n, "heldout_tokens": n}
        for fmt, t in totals.items()
    }


def decode_speed(engines: dict, prompts: list[list[int]], rounds: int = 3, tokens: int = 32) -> dict[str, float]:
    times: dict[str, list[float]] = {fmt: [] for fmt in engines}
    for r in range(rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))  # alternate, so drift falls on all alike
        for fmt in order:
            for ids in prompts:
                result = engines[fmt].generate(token_ids=ids, max_new_tokens=tokens, stop_on_eos=False)
                times[fmt].append(result.tpot_s)
    return {fmt: statistics.median(t) for fmt, t in times.items()}


MC_YAML = """task: remoe_corpus_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def mc_items(texts: list[str], count: int, seed: int = 0) -> list[dict]:
    """4-way: a held-out prompt's first 60% of words, its true rest (up to 8 words) or three other prompts'."""
    rng = random.Random(seed)
    usable = [t.split() for t in texts if len(t.split()) >= 10]
    items = []
    for words in usable[:count]:
        cut = int(len(words) * 0.6)
        rest = lambda w: " " + " ".join(w[int(len(w) * 0.6) :][:8])  # noqa: E731
        others = rng.sample([w for w in usable if w is not words], 3)
        choices = [rest(words)] + [rest(w) for w in others]
        order = list(range(4))
        rng.shuffle(order)
        question = " ".join(words[:cut])
        items.append({"question": question, "choices": [choices[i] for i in order], "answer": order.index(0)})
    return items


def mc_accuracy(paths: dict[str, Path], items: list[dict]) -> dict[str, float]:
    import os

    import lm_eval
    from lm_eval.tasks import TaskManager

    from remoe.cluster import LocalCluster

    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mc.jsonl"
        data.write_text("".join(json.dumps(i) + "\n" for i in items))
        (Path(tmp) / "mc.yaml").write_text(MC_YAML.format(data=data))
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "datasets")
        for fmt, path in paths.items():
            with LocalCluster(path, port=0, predictor=False, run_dir=Path(tmp) / f"run-{fmt}") as cluster:
                result = lm_eval.simple_evaluate(
                    model="local-completions",
                    model_args={
                        "model": path.name,
                        "base_url": f"{cluster.http_url}/completions",
                        "num_concurrent": 2,
                        "max_retries": 1,
                        "tokenized_requests": True,
                    },
                    tasks=["remoe_corpus_mc"],
                    task_manager=TaskManager(include_path=tmp),
                    batch_size=1,
                )
            out[fmt] = float(result["results"]["remoe_corpus_mc"]["acc,none"])
    return out


def measure_model(case: ModelCase, limits: dict, texts: list[str]) -> dict:
    """limits: prompts, tokens, ppl_prompts, mc (the medium model's decode is ~10x the tiny one's: fewer)."""
    args = argparse.Namespace(**limits)
    paths = splits(case)
    engines = {fmt: LocalEngine(p, device="cpu") for fmt, p in paths.items()}
    tok = engines["same"].tokenizer
    encoded = [tok.encode(t) for t in texts]
    prompts = [ids[:PROMPT_TOKENS] for ids in encoded if len(ids) >= 4][: args.prompts]
    heldout = [ids[:PPL_TOKENS] for ids in encoded if len(ids) >= 8][: args.ppl_prompts]
    started = time.perf_counter()
    result = {
        "model": case.name,
        "note": case.note,
        "expert_bytes": {fmt: Manifest.load(p).experts_bytes for fmt, p in paths.items()},
        "agreement": agreement(engines, prompts, args.tokens),
        "perplexity": perplexity(engines, heldout),
        "tpot_s": decode_speed(engines, prompts[:3]),
        "prompts": len(prompts),
        "tokens": args.tokens,
        "mc_items": args.mc,
    }
    result["mc_accuracy"] = mc_accuracy(paths, mc_items(texts, args.mc)) if args.mc else {}
    result["seconds"] = time.perf_counter() - started
    return result


def write_markdown(r: dict, path: Path) -> None:
    lines = [
        "# Quantized experts: quality, bytes and speed",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Commit {r['commit']}. Written by `python bench/quantization.py`.",
        "",
        f"Each model split three ways: exact (`--expert-dtype same`), int8 and int4 (group {GROUP}). int8/int4 run "
        "the native VNNI kernels, which also quantize each expert's input activations to int8 per 32 columns. "
        f"Greedy agreement over the exact model's continuation of held-out corpus prompts "
        "(teacher-forced top-1, and free-running); KL(exact || quantized) per token; perplexity on held-out prompts; "
        "multiple-choice accuracy by lm-evaluation-harness through `remoe up` (4 choices: chance is 25%); decode "
        "time per token through LocalEngine (median of alternated rounds; on models this small the experts are a "
        "small part of a token's time, see docs/results/quantized_kernels.md for the expert kernels alone).",
        "",
        "The expert kernels, same run (docs/results/quantized_kernels.md has every candidate; read bandwidth "
        f"{r['kernels']['bandwidth']['read_gb_s']:.1f} GB/s at best):",
        "",
        *quantized_kernels.headline(r["kernels"]),
        "",
        "| model | experts | expert MiB | top-1 agreement | identical | first difference | KL | perplexity | "
        "ppl vs exact | MC accuracy | TPOT ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        exact_ppl = m["perplexity"]["same"]["perplexity"]
        for fmt in FORMATS:
            a, p = m["agreement"][fmt], m["perplexity"][fmt]
            mc = m["mc_accuracy"].get(fmt)
            lines.append(
                f"| {m['model']} | {'exact' if fmt == 'same' else fmt} | {m['expert_bytes'][fmt] / 2**20:.1f} | "
                f"{a['top1_agreement']:.2%} | {a['identical']:.0%} | {a['first_difference']:.1f} | {a['kl']:.2e} | "
                f"{p['perplexity']:.3f} | {p['perplexity'] / exact_ppl - 1:+.2%} | "
                f"{'' if mc is None else f'{mc:.0%}'} | {m['tpot_s'][fmt] * 1e3:.1f} |"
            )
    for m in r["models"]:
        lines.append(
            f"- {m['model']}: {m['note']}. Agreement over {m['prompts']} prompts x {m['tokens']} tokens, perplexity "
            f"over {m['perplexity']['same']['heldout_tokens']} held-out tokens, {m['mc_items']} multiple-choice "
            f"items; {m['seconds'] / 60:.1f} min."
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100, help="held-out prompts for the greedy agreement")
    parser.add_argument("--tokens", type=int, default=200, help="greedy tokens per prompt")
    parser.add_argument("--ppl-prompts", type=int, default=200, help="held-out prompts for perplexity and KL")
    parser.add_argument("--mc", type=int, default=100, help="multiple-choice items (0: skip lm-eval)")
    parser.add_argument("--models", default="tiny,medium", help="comma-separated: tiny (trained), medium")
    parser.add_argument("--medium-prompts", type=int, default=10, help="the medium model's agreement prompts")
    parser.add_argument("--medium-tokens", type=int, default=64, help="the medium model's greedy tokens per prompt")
    parser.add_argument("--medium-ppl-prompts", type=int, default=40, help="the medium model's perplexity prompts")
    parser.add_argument("--medium-mc", type=int, default=40, help="the medium model's multiple-choice items")
    parser.add_argument("--quick", action="store_true", help="10 prompts, 32 tokens, 20 perplexity prompts, 20 items")
    parser.add_argument("--kernel-rounds", type=int, default=11, help="rounds of bench/quantized_kernels.py")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.tokens, args.ppl_prompts, args.mc = 10, 32, 20, 20
        args.medium_prompts, args.medium_tokens, args.medium_ppl_prompts, args.medium_mc = 3, 16, 5, 8
    full = {"prompts": args.prompts, "tokens": args.tokens, "ppl_prompts": args.ppl_prompts, "mc": args.mc}
    reduced = {
        "prompts": args.medium_prompts,
        "tokens": args.medium_tokens,
        "ppl_prompts": args.medium_ppl_prompts,
        "mc": args.medium_mc,
    }
    texts = read_prompts(corpus() / "test.jsonl")
    cases = []
    for name in args.models.split(","):
        if name == "tiny":
            cases.append((tiny(minutes=8), full))
        elif name == "medium":
            cases.append((medium(), reduced))
        else:
            sys.exit(f"--models: unknown model {name!r} (tiny, medium)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print("expert kernels (bench/quantized_kernels.py) ...", file=sys.stderr)
    kernels = quantized_kernels.measure(args.kernel_rounds)
    quantized_kernels.write(kernels, args.out)
    result = {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": commit,
        "group_size": GROUP,
        "kernels": kernels,
        "models": [measure_model(case, limits, texts) for case, limits in cases],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantization.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, args.out / "quantization.md")
    print((args.out / "quantization.md").read_text())


if __name__ == "__main__":
    main()
