"""The model directory's tokenizer and end-of-sequence ids, as transformers' generate sees them."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]  # ids 0 and 1: EOS/BOS and padding
# ChatML, as Qwen's checkpoints ship it: the tiny models answer /v1/chat/completions the way real ones do.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_bpe_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (deterministic, offline), as a transformers fast tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[1]
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


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
