"""The models the evaluation measures, made here (nothing downloaded) and kept under .cache/bench/.

- tiny: the trained tiny MoE (data/models/trained-qwen3 from `make bench-predictor`, else a short training run
  on the corpus): real routing, so forecasts mean something.
- medium: a random-init qwen3_moe with 6 layers of 32 experts (top-4), hidden 512.
- deepseek-v2-lite / gpt2-moe: the paper's models' shapes with fewer layers so they fit in 24 GB (random init,
  DeepSeek in bf16 as published), with the tiny model's tokenizer (ids < 512 are valid in either vocabulary).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(".cache/bench")
TRAINED = Path("data/models/trained-qwen3")
CORPUS = Path("data/corpus")


@dataclass(frozen=True)
class ModelCase:
    name: str
    path: Path
    note: str


def _run(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "remoe.cli", *argv], check=True)


def corpus() -> Path:
    """The prompt corpus directory (train.jsonl, test.jsonl), built from Debian's text packages if missing."""
    if (CORPUS / "test.jsonl").is_file():
        return CORPUS
    out = CACHE / "corpus"
    if not (out / "test.jsonl").is_file():
        _run("corpus", "build", "--out", str(out), "--max-prompts", "3000", "-q")
    return out


def tiny(minutes: float) -> ModelCase:
    if (TRAINED / "config.json").is_file():
        return ModelCase("tiny (trained)", TRAINED, "qwen3_moe 4 layers x 8 experts top-2, trained on the corpus")
    out = CACHE / f"trained-{minutes:g}min"  # by training time: a quick run's model is not the full run's
    if not (out / "config.json").is_file():
        steps = str(int(120 * minutes))
        _run("train-tiny", "--corpus", str(corpus() / "train.jsonl"), "--out", str(out), "--steps", steps,
             "--max-minutes", str(minutes), "-q")  # fmt: skip
    return ModelCase("tiny (trained)", out, f"qwen3_moe 4 layers x 8 experts top-2, trained {minutes:g} min here")


def medium() -> ModelCase:
    from remoe.model.tiny import TinySpec, make_tiny_model

    out = CACHE / "medium"
    if not (out / "config.json").is_file():
        make_tiny_model(TinySpec("qwen3_moe", layers=6, experts=32, top_k=4, hidden=512), out)
    return ModelCase("medium (random)", out, "qwen3_moe 6 layers x 32 experts top-4, hidden 512, random init")


def paper_shape(name: str, layers: int, tokenizer_from: Path) -> ModelCase:
    """DeepSeek-V2-Lite (bf16) or GPT2-moe's shape with `layers` layers, random init, a usable tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from remoe.scheduler.shape import paper_model_config

    out = CACHE / f"{name}-{layers}l"
    if not (out / "config.json").is_file():
        config, dtype = paper_model_config(name, layers)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(out)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_from / f, out / f)
    what = {"deepseek-v2-lite": "DeepSeek-V2-Lite", "gpt2-moe": "GPT2-moe"}[name]
    return ModelCase(f"{what} ({layers} layers)", out, f"{what}'s shape, {layers} of its layers, random init")


QUANTIZED_GROUP = 128  # input columns per int4 scale, as `remoe split --expert-dtype int4` defaults


def quantized(case: ModelCase, expert_dtype: str) -> ModelCase:
    """The model split with its routed experts stored as `expert_dtype` (int8 or int4; the backbone unchanged),
    kept beside the checkpoint under .cache/bench/."""
    from remoe.model.split import split_checkpoint

    out = CACHE / f"{case.path.name}-{expert_dtype}"
    if not (out / "manifest.json").is_file():
        split_checkpoint(case.path, out, progress=False, expert_dtype=expert_dtype, group_size=QUANTIZED_GROUP)
    group = f", group {QUANTIZED_GROUP}" if expert_dtype == "int4" else ""
    return ModelCase(f"{case.name}, {expert_dtype} experts", out, f"{case.note}; experts {expert_dtype}{group}")
