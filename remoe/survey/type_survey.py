"""The support survey: for one MoE model type, a seeded tiny checkpoint as transformers saves it, checked
against transformers' own `generate` through LocalEngine (the checkpoint, a one-expert budget, a split).

`python -m remoe.survey.type_survey TYPE OUT_DIR` prints one JSON line (a TypeResult), so `--all` runs every type
in its own process, several at once: a type that crashes or hangs takes only its own process down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from remoe.model.type_support import SUPPORT_FILE

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
    unbatched: str = ""  # why the backbone serves this type's requests each alone ("": they share decode steps)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def survey(model_type: str, out_dir: Path, tokens: int = SURVEY_TOKENS, cluster: bool = False) -> TypeResult:
    """The checks, in order, stopping at the first that differs: the checkpoint, a one-expert budget, a split,
    batched requests (when the type's cache can be batched) and, with `cluster`, `remoe up`."""
    from remoe.model.engine import LocalEngine
    from remoe.model.model_types import tiny_config
    from remoe.model.split import split_checkpoint
    from remoe.model.step_cache import batching_unsupported
    from remoe.model.tiny import build_tokenizer
    from remoe.model.verify import reference_tokens
    from remoe.survey.serving_checks import batched_tokens, cluster_tokens

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
        result.unbatched = batching_unsupported(engine.model.config) or ""
        if not result.unbatched:
            if not _all_same(result, "batched", batched_tokens(engine.model, engine.device, ids), expected):
                return result
        if cluster:
            first, concurrent = cluster_tokens(checkpoint, ids, tokens)
            if not _all_same(result, "remoe up", [first, *concurrent], expected):
                return result
    except Exception as e:  # noqa: BLE001 - the survey reports what Remoe raised
        result.status, result.reason = REMOE_FAILS, _reason(e)
    return result


def _same(result: TypeResult, check: str, engine, ids: list[int], expected: list[int]) -> bool:
    got = engine.generate(token_ids=ids, max_new_tokens=len(expected), stop_on_eos=False).token_ids
    return _all_same(result, check, [got], expected)


def _all_same(result: TypeResult, check: str, outputs: list[list[int]], expected: list[int]) -> bool:
    """Each output equals transformers' tokens as far as it goes (a shorter request: their prefix)."""
    for n, got in enumerate(outputs):
        want = expected[: len(got)]
        if not got or got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), len(got))
            theirs = want[first] if first < len(want) else "none"
            mine = got[first] if first < len(got) else "none"
            _mismatch(result, f"{check} (request {n}): token {first} differs ({mine} vs transformers' {theirs})")
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
    """Every MoE model type of the pinned transformers, each in its own process, `jobs` at a time; the
    representative subset (CLUSTER_TYPES) through `remoe up` too."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from remoe.model.model_types import moe_model_types
    from remoe.survey.serving_checks import CLUSTER_TYPES

    types = moe_model_types()
    text_types = {t.model_type for t in types if not t.composite}

    def one(model_type: str) -> TypeResult:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "remoe.survey.type_survey", model_type, str(out_dir / model_type)]
                + (["--cluster"] if model_type in CLUSTER_TYPES else []),
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


def write_support(results: list[TypeResult], json_path: Path, table_path: Path, readme: Path | None = None) -> None:
    """The package's support file, the results table (and its provenance JSON), and the README's paragraph."""
    import transformers

    from remoe.machine import machine_description
    from remoe.model.type_support import readme_summary, replace_readme_block
    from remoe.survey.serving_checks import CLUSTER_TYPES

    version = transformers.__version__
    survey = {"transformers": version, "results": {r.model_type: asdict(r) for r in results}}
    json_path.write_text(json.dumps(survey, indent=1) + "\n")
    if readme is not None and readme.is_file():
        readme.write_text(replace_readme_block(readme.read_text(), readme_summary(survey)))
    lines = [
        "# Model types: token-exact through Remoe",
        "",
        f"Every causal-LM model type of transformers {version} whose experts go through its experts interface,",
        f"each on a seeded tiny config (`remoe/model/model_types.py`), {SURVEY_TOKENS} greedy tokens (EOS ignored)",
        "and prefill logits (within 1e-4, float32) against transformers' own `generate`, through LocalEngine on the",
        "checkpoint, under a one-expert budget and from a `remoe split`; then (batched) three staggered requests",
        "sharing decode steps in the backbone's BatchEngine, for every type whose cache can be batched (the others",
        "are served one request at a time, for the reason given); and (remoe up) a representative subset through a",
        "real local cluster: two expert services, half of each MoE layer's experts in serverless functions, one",
        'request and then two at once. Written by `python -m remoe.survey.type_survey --all`. "transformers" would',
        "mean transformers raised on the survey's tiny config (building or running it) before Remoe was tried.",
        "",
        "| model type | result | checks passed | max logit diff | concurrent requests | reason |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        diff = f"{r.max_logit_diff:.1e}" if r.max_logit_diff is not None else ""
        reason = r.reason.replace("|", "\\|")
        if r.status in (EXACT, MISMATCH, REMOE_FAILS):
            batching = "share decode steps" if not r.unbatched else f"each alone: {r.unbatched}"
        else:
            batching = ""
        lines.append(f"| {r.model_type} | {r.status} | {', '.join(r.checks)} | {diff} | {batching} | {reason} |")
    counts = {s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)}
    lines += ["", "Totals: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."]
    lines += ["", "The `remoe up` subset, one type for each expert-math family, cache kind and loader path:", ""]
    lines += [f"- {t}: {covers}" for t, covers in CLUSTER_TYPES.items()]
    table_path.write_text("\n".join(lines) + "\n")
    # Beside the table, what docs/results/README.md reads for its provenance line.
    provenance = {
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "transformers": version,
    }
    table_path.with_suffix(".json").write_text(
        json.dumps({**provenance, "results": [asdict(r) for r in results]}) + "\n"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m remoe.survey.type_survey",
        description="Check MoE model types against transformers on seeded tiny checkpoints.",
    )
    parser.add_argument("model_type", nargs="?", help="one model type (prints its result as one JSON line)")
    parser.add_argument("out_dir", nargs="?", help="where its tiny checkpoint and split go")
    parser.add_argument("--all", action="store_true", help="every MoE model type, each in its own process")
    parser.add_argument("--cluster", action="store_true", help="one model type: also through `remoe up`")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once with --all (default 2)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parents[1] / "model" / "data" / SUPPORT_FILE)
    parser.add_argument("--table", type=Path, default=Path("docs/results/model_types.md"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="whose model-types paragraph to rewrite")
    args = parser.parse_args(argv)
    if args.all:
        with tempfile.TemporaryDirectory(prefix="remoe-survey-") as tmp:
            results = survey_all(Path(tmp), args.jobs)
        write_support(results, args.json, args.table, args.readme)
        print(f"wrote {args.json}, {args.table} and {args.readme}'s model types")
        return
    if not args.model_type or not args.out_dir:
        parser.error("give MODEL_TYPE OUT_DIR, or --all")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(survey(args.model_type, out_dir, cluster=args.cluster).to_json(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
