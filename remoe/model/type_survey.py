"""The support survey: for one MoE model type, a seeded tiny checkpoint as transformers saves it, checked
against transformers' own `generate` through LocalEngine (the checkpoint, a one-expert budget, a split).

`python -m remoe.model.type_survey TYPE OUT_DIR` prints one JSON line (a TypeResult), so `--all` runs every type
in its own process, several at once: a type that crashes or hangs takes only its own process down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# Outcomes: "exact" (every check equal), "mismatch" (a check differs: a Remoe bug), "remoe" (Remoe cannot load or
# run it: the reason), "transformers" (transformers itself cannot build or run the tiny model on CPU: the reason).
EXACT, MISMATCH, REMOE_FAILS, TRANSFORMERS_FAILS = "exact", "mismatch", "remoe", "transformers"
SURVEY_PROMPT = "The quick brown fox explains how a hash table works"
SURVEY_TOKENS = 16
LOGIT_TOL = 1e-4


@dataclass
class TypeResult:
    model_type: str
    status: str
    reason: str = ""
    checks: list[str] = field(default_factory=list)  # the checks that passed
    max_logit_diff: float | None = None
    tokens: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def survey(model_type: str, out_dir: Path, tokens: int = SURVEY_TOKENS) -> TypeResult:
    from remoe.model.engine import LocalEngine
    from remoe.model.model_types import tiny_config
    from remoe.model.split import split_checkpoint
    from remoe.model.tiny import build_tokenizer
    from remoe.model.verify import reference_tokens

    checkpoint = out_dir / "checkpoint"
    try:
        tokenizer = build_tokenizer(512)
        special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        config = tiny_config(model_type, len(tokenizer), special)
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        del model
        ids = tokenizer.encode(SURVEY_PROMPT)
        expected, ref_logits = reference_tokens(checkpoint, ids, tokens)
    except Exception as e:  # noqa: BLE001 - the survey reports whatever transformers raised
        return TypeResult(model_type, TRANSFORMERS_FAILS, _reason(e))

    result = TypeResult(model_type, EXACT, tokens=tokens)
    try:
        engine = LocalEngine(checkpoint, device="cpu", dtype=torch.float32)
        result.max_logit_diff = float((engine.prefill_logits(ids) - ref_logits).abs().max())
        if result.max_logit_diff > LOGIT_TOL:
            return _mismatch(result, f"prefill logits differ by {result.max_logit_diff:.2e} (> {LOGIT_TOL})")
        if not _same(result, "checkpoint", engine, ids, expected):
            return result
        one_expert = engine.weights.expert_nbytes_as(engine.backbone.arch.layer_indices[0], 0, torch.float32)
        budget = LocalEngine(checkpoint, device="cpu", dtype=torch.float32, expert_budget_bytes=one_expert)
        if not _same(result, "one-expert budget", budget, ids, expected):
            return result
        split = out_dir / "split"
        split_checkpoint(checkpoint, split, progress=False)
        if not _same(result, "split", LocalEngine(split, device="cpu", dtype=torch.float32), ids, expected):
            return result
    except Exception as e:  # noqa: BLE001 - the survey reports what Remoe raised
        result.status, result.reason = REMOE_FAILS, _reason(e)
    return result


def _same(result: TypeResult, check: str, engine, ids: list[int], expected: list[int]) -> bool:
    got = engine.generate(token_ids=ids, max_new_tokens=len(expected), stop_on_eos=False).token_ids
    if got != expected:
        first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        _mismatch(result, f"{check}: token {first} differs ({got[first]} vs transformers' {expected[first]})")
        return False
    result.checks.append(check)
    return True


def _mismatch(result: TypeResult, reason: str) -> TypeResult:
    result.status, result.reason = MISMATCH, reason
    return result


def _reason(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1]
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]} ({Path(where.filename).name}:{where.lineno})"


def survey_all(out_dir: Path, jobs: int = 2, timeout_s: float = 600.0) -> list[TypeResult]:
    """Every MoE model type of the pinned transformers, each in its own process, `jobs` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from remoe.model.model_types import moe_model_types

    types = moe_model_types()
    text_types = {t.model_type for t in types if not t.composite}

    def one(model_type: str) -> TypeResult:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "remoe.model.type_survey", model_type, str(out_dir / model_type)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return TypeResult(model_type, REMOE_FAILS, f"the survey ran past {timeout_s:.0f} s")
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = " ".join(done.stderr.split())[-300:]
            return TypeResult(model_type, REMOE_FAILS, f"the survey process exited {done.returncode}: {tail}")
        return TypeResult(**json.loads(lines[-1]))

    results = []
    with ThreadPoolExecutor(jobs) as pool:
        todo = [t.model_type for t in types if not t.composite]
        for result in tqdm(pool.map(one, todo), total=len(todo), desc="model types"):
            results.append(result)
    for t in types:
        if t.composite:  # its text model has the causal-LM class: that is the one checked
            reason = f"multimodal: its text model {t.text_model_type!r} is the one checked"
            status = "composite" if t.text_model_type in text_types else TRANSFORMERS_FAILS
            results.append(TypeResult(t.model_type, status, reason))
    return sorted(results, key=lambda r: r.model_type)


def write_support(results: list[TypeResult], json_path: Path, table_path: Path) -> None:
    import transformers

    version = transformers.__version__
    json_path.write_text(
        json.dumps({"transformers": version, "results": {r.model_type: asdict(r) for r in results}}, indent=1) + "\n"
    )
    lines = [
        "# Model types: token-exact through Remoe",
        "",
        f"Every causal-LM model type of transformers {version} whose experts go through its experts interface,",
        f"each on a seeded tiny config (`remoe/model/model_types.py`), {SURVEY_TOKENS} greedy tokens (EOS ignored)",
        "and prefill logits (within 1e-4, float32) against transformers' own `generate`, through LocalEngine on the",
        "checkpoint, under a one-expert budget and from a `remoe split`. Written by",
        '`python -m remoe.model.type_survey --all`. "transformers" means transformers raised on the survey\'s',
        "generic tiny config (building or running it) before Remoe was tried: the type needs a hand-made override in",
        "remoe/model/model_types.py, not yet written, and is not judged.",
        "",
        "| model type | result | checks passed | max logit diff | reason |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        diff = f"{r.max_logit_diff:.1e}" if r.max_logit_diff is not None else ""
        reason = r.reason.replace("|", "\\|")
        lines.append(f"| {r.model_type} | {r.status} | {', '.join(r.checks)} | {diff} | {reason} |")
    counts = {s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)}
    lines += ["", "Totals: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."]
    table_path.write_text("\n".join(lines) + "\n")
    # Beside the table, what docs/results/README.md reads for its provenance line.
    provenance = {
        "machine": f"{platform.processor() or platform.machine()} x {os.cpu_count()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "transformers": version,
    }
    table_path.with_suffix(".json").write_text(
        json.dumps({**provenance, "results": [asdict(r) for r in results]}) + "\n"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m remoe.model.type_survey",
        description="Check MoE model types against transformers on seeded tiny checkpoints.",
    )
    parser.add_argument("model_type", nargs="?", help="one model type (prints its result as one JSON line)")
    parser.add_argument("out_dir", nargs="?", help="where its tiny checkpoint and split go")
    parser.add_argument("--all", action="store_true", help="every MoE model type, each in its own process")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once with --all (default 2)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "data" / "model_type_support.json")
    parser.add_argument("--table", type=Path, default=Path("docs/results/model_types.md"))
    args = parser.parse_args(argv)
    if args.all:
        with tempfile.TemporaryDirectory(prefix="remoe-survey-") as tmp:
            results = survey_all(Path(tmp), args.jobs)
        write_support(results, args.json, args.table)
        print(f"wrote {args.json} and {args.table}")
        return
    if not args.model_type or not args.out_dir:
        parser.error("give MODEL_TYPE OUT_DIR, or --all")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(survey(args.model_type, out_dir).to_json(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
