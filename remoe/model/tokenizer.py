"""The model directory's tokenizer and end-of-sequence ids, as transformers' generate sees them."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, GenerationConfig, PretrainedConfig, PreTrainedTokenizerBase

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase | None:
    """The directory's tokenizer, or None when it ships none (then only token ids can be used)."""
    if not any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def eos_token_ids(model_dir: Path, config: PretrainedConfig) -> set[int]:
    """EOS ids from generation_config.json when present, else from the model config (as generate does)."""
    if (model_dir / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(str(model_dir), local_files_only=True).eos_token_id
    else:
        eos = GenerationConfig.from_model_config(config).eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list) else [eos])}
