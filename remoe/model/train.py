"""`remoe train-tiny`: train a small MoE on the prompt corpus on the CPU, saved as a normal HF checkpoint.

A randomly initialised model routes by token identity only, which makes expert prediction too easy to
fake and too hard to trust; a trained one routes by meaning. Byte-level BPE trained on the same corpus.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from remoe.model.tokenizer import train_bpe_tokenizer


@dataclass(slots=True)
class TrainSpec:
    arch: str = "qwen3_moe"
    layers: int = 4
    experts: int = 8
    top_k: int = 2
    hidden: int = 256
    vocab: int = 4096
    seq_len: int = 128
    batch: int = 16
    steps: int = 600
    lr: float = 3e-3
    seed: int = 0
    max_minutes: float = 20.0  # stops early (and still saves) when the time is up

    def __post_init__(self) -> None:
        if self.arch not in ("qwen3_moe", "mixtral"):
            raise ValueError(f"train-tiny supports qwen3_moe and mixtral, not {self.arch!r}")
        if self.steps < 1 or self.batch < 1 or self.seq_len < 8:
            raise ValueError("steps, batch must be >= 1 and seq_len >= 8")


def _config(spec: TrainSpec, tokenizer: PreTrainedTokenizerFast):
    heads = max(1, spec.hidden // 64)
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        num_experts_per_tok=spec.top_k,
        max_position_embeddings=max(512, spec.seq_len),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.arch == "qwen3_moe":
        fields.update(
            num_experts=spec.experts,
            moe_intermediate_size=spec.hidden,
            intermediate_size=2 * spec.hidden,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
            head_dim=spec.hidden // heads,
            output_router_logits=True,
            router_aux_loss_coef=0.01,  # keeps experts in use, so routing carries information
        )
    else:
        fields.update(
            num_local_experts=spec.experts,
            intermediate_size=spec.hidden,
            output_router_logits=True,
            router_aux_loss_coef=0.01,
        )
    return AutoConfig.for_model(spec.arch, **fields)


def _token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text) + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def train_tiny(texts: list[str], out: str | Path, spec: TrainSpec, progress: bool = True) -> dict:
    """Train and save to `out`; returns a summary (parameters, steps, first and last loss, minutes)."""
    if not texts:
        raise ValueError("no training text")
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    tokenizer = train_bpe_tokenizer(texts, spec.vocab)
    model = AutoModelForCausalLM.from_config(_config(spec, tokenizer), dtype=torch.float32)
    stream = _token_stream(tokenizer, texts)
    if len(stream) <= spec.seq_len + 1:
        raise ValueError(f"only {len(stream)} tokens of text; need more than seq_len {spec.seq_len}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    warmup = max(1, spec.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    generator = torch.Generator().manual_seed(spec.seed)
    model.train()
    start = time.monotonic()
    losses: list[float] = []
    bar = tqdm(range(spec.steps), desc="train-tiny", unit="step", disable=not progress)
    for _ in bar:
        starts = torch.randint(0, len(stream) - spec.seq_len - 1, (spec.batch,), generator=generator)
        batch = torch.stack([stream[s : s + spec.seq_len] for s in starts.tolist()])  # [B, S]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if time.monotonic() - start > spec.max_minutes * 60:
            break
    model.eval()
    model.config.output_router_logits = False
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": len(losses),
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "minutes": (time.monotonic() - start) / 60,
    }
