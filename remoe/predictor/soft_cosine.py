"""Soft Cosine Similarity (the paper's SPS re-rank) over the served model's own token embeddings.

For prompts as bags of token ids a, b (count vectors over the vocabulary) and S[i, j] = max(0, cos(e_i, e_j))
from the model's input embedding matrix, SCS(a, b) = a^T S b / sqrt(a^T S a * b^T S b).

Memory: the embedding matrix is kept as the checkpoint stores it (in the predictor, the backbone file's mapped
pages) and a row becomes a unit float32 vector the first time a prompt uses it, kept in a table whose untouched
pages are never resident: only the rows of tokens that occur are held. A float32 unit copy of the whole of
DeepSeek-V2-Lite's [102400, 2048] table held 0.84 GB for the service's life, most of it rows no prompt had.

Cost: only the rows of tokens that occur are touched. The query's tokens Uq meet the candidates' union U
once ([Uq, U] Gram block), and each candidate's own norm sqrt(b^T S b) is computed once, when it is
stored, not on every query: the full [U, U] Gram of a 50-candidate union (thousands of tokens) would cost
more than the rest of a prediction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

SCS_TOKENS = 256  # a prompt's first tokens that the soft cosine sees (the paper's prompts are 500 characters)


@dataclass(slots=True)
class TokenBags:
    """Candidates prepared for `SoftCosine.against`: counts over their joint vocabulary and their norms."""

    vocab: torch.Tensor  # [U] distinct token ids
    counts: torch.Tensor  # [N, U] float32
    norms: torch.Tensor  # [N] sqrt(b^T S b)


class SoftCosine:
    def __init__(self, token_embeddings: torch.Tensor) -> None:
        self.embeddings = token_embeddings.detach().cpu()  # [V, H] as stored (a mapped file stays mapped)
        # [V, H] unit rows, filled on first use: a fresh large allocation is untouched pages until written
        self._unit = torch.empty(self.embeddings.shape, dtype=torch.float32)
        self._ready = torch.zeros(len(self.embeddings), dtype=torch.bool)  # [V]
        self._filling = threading.Lock()

    def unit(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` [u] as unit float32 vectors [u, H]: the Gram entries are dot products of these rows.
        Normalizing rows alone gives the same bits as normalizing the whole table (a row's norm is its own)."""
        missing = ids[~self._ready[ids]]
        if len(missing):
            with self._filling:  # rows are written before they are marked ready, so a reader never sees a gap
                self._unit[missing] = torch.nn.functional.normalize(self.embeddings[missing].float(), dim=-1)
                self._ready[missing] = True
        return self._unit[ids]

    def _bag(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, counts = torch.unique(torch.as_tensor(tokens[:SCS_TOKENS], dtype=torch.long), return_counts=True)
        return ids, counts.float()  # [u], [u]

    def self_norm(self, tokens: list[int]) -> float:
        """sqrt(b^T S b): stored with each prompt so queries need not recompute it."""
        if not tokens:
            return 0.0
        ids, counts = self._bag(tokens)
        rows = self.unit(ids)  # [u, H]
        gram = (rows @ rows.T).clamp(min=0.0)  # [u, u]
        return float(torch.sqrt(counts @ gram @ counts))

    def bags(self, candidates: list[list[int]], norms: list[float | None] | None = None) -> TokenBags:
        clipped = [c[:SCS_TOKENS] for c in candidates]
        lengths = torch.tensor([len(c) for c in clipped])
        flat = torch.tensor([t for c in clipped for t in c], dtype=torch.long)
        vocab, column = torch.unique(flat, return_inverse=True)
        row = torch.repeat_interleave(torch.arange(len(clipped)), lengths)
        counts = torch.zeros(len(clipped), len(vocab))
        counts.index_put_((row, column), torch.ones(len(flat)), accumulate=True)
        norms = norms or [None] * len(clipped)
        values = [n if n is not None else self.self_norm(c) for n, c in zip(norms, clipped, strict=True)]
        return TokenBags(vocab, counts, torch.tensor(values, dtype=torch.float32))

    def against(self, query: list[int], bags: TokenBags) -> torch.Tensor:
        """SCS of `query` with every prepared candidate -> [N]."""
        if not query or len(bags.vocab) == 0:
            return torch.zeros(len(bags.norms))
        ids, q = self._bag(query)
        rows = self.unit(ids)  # [uq, H]
        cross = (rows @ self.unit(bags.vocab).T).clamp(min=0.0)  # [uq, U]
        numerator = bags.counts @ (q @ cross)  # [N]
        q_norm = torch.sqrt(q @ (rows @ rows.T).clamp(min=0.0) @ q)
        return numerator / (q_norm * bags.norms).clamp(min=1e-12)

    def many(self, query: list[int], candidates: list[list[int]]) -> torch.Tensor:
        """SCS of `query` with each candidate -> [N]."""
        if not candidates:
            return torch.zeros(0)
        return self.against(query, self.bags(candidates))

    def similarity(self, a: list[int], b: list[int]) -> float:
        return float(self.many(a, [b])[0])
