"""Soft Cosine Similarity (the paper's SPS re-rank) over the served model's own token embeddings.

For prompts as bags of token ids a, b (count vectors over the vocabulary) and S[i, j] = max(0, cos(e_i, e_j))
from the model's input embedding matrix, SCS(a, b) = a^T S b / sqrt(a^T S a * b^T S b). Only the rows of
tokens that occur are touched: U = distinct tokens of both prompts, S is [U, U].
"""

from __future__ import annotations

from collections import Counter

import torch


class SoftCosine:
    def __init__(self, token_embeddings: torch.Tensor) -> None:
        # [V, H] -> unit rows, float32 on the CPU: the Gram entries are dot products of these rows.
        self.unit = torch.nn.functional.normalize(token_embeddings.detach().float().cpu(), dim=-1)

    def _gram(self, tokens: list[int]) -> torch.Tensor:
        rows = self.unit[tokens]  # [U, H]
        return (rows @ rows.T).clamp(min=0.0)  # [U, U]

    def similarity(self, a: list[int], b: list[int]) -> float:
        return float(self.many(a, [b])[0])

    def many(self, query: list[int], candidates: list[list[int]]) -> torch.Tensor:
        """SCS of `query` with each candidate -> [N]."""
        if not query or not candidates:
            return torch.zeros(len(candidates))
        vocab = sorted(set(query).union(*map(set, candidates)))
        position = {t: i for i, t in enumerate(vocab)}
        gram = self._gram(vocab)  # [U, U]

        def counts(tokens: list[int]) -> torch.Tensor:
            v = torch.zeros(len(vocab))
            for token, n in Counter(tokens).items():
                v[position[token]] = n
            return v

        q = counts(query)  # [U]
        c = torch.stack([counts(t) for t in candidates])  # [N, U]
        qs = gram @ q  # [U]
        num = c @ qs  # [N]
        den = torch.sqrt((q @ qs) * torch.einsum("nu,uv,nv->n", c, gram, c)).clamp(min=1e-12)
        return num / den
