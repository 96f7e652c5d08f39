"""ExactIndex: exact cosine top-k over unit vectors held in this process (numpy), for embedded Qdrant.

Embedded Qdrant (local mode) is one process per path and searches by brute force in Python: 4 ms for 5,000
prompts on the project's 2-core Xeon, most of it re-normalising every stored vector on every query. The
same exact search over a mirror of the vectors kept here takes about 0.3 ms. Qdrant stays the store of
record (persistence, payloads, a server in compose with its own HNSW index); the mirror is rebuilt from it
on open and appended to on every write, which in local mode all go through this process.
"""

from __future__ import annotations

import numpy as np


class ExactIndex:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids: list[str] = []
        self._vectors = np.zeros((0, dim), dtype=np.float32)  # [N, D] unit rows
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, ids: list[str], vectors: list[list[float]]) -> None:
        rows = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)  # [B, D]
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        if self._size + len(rows) > len(self._vectors):  # grow by doubling: appends stay amortised O(1)
            grown = np.zeros((max(2 * len(self._vectors), self._size + len(rows), 1024), self.dim), np.float32)
            grown[: self._size] = self._vectors[: self._size]
            self._vectors = grown
        self._vectors[self._size : self._size + len(rows)] = rows
        self._ids += ids
        self._size += len(rows)

    def search(self, query: list[float], limit: int) -> list[tuple[str, float]]:
        """The `limit` most similar stored vectors, best first: [(id, cosine), ...]."""
        if self._size == 0 or limit < 1:
            return []
        q = np.asarray(query, dtype=np.float32)
        q /= max(float(np.linalg.norm(q)), 1e-12)
        scores = self._vectors[: self._size] @ q  # [N]
        k = min(limit, self._size)
        top = np.argpartition(-scores, k - 1)[:k] if k < self._size else np.arange(self._size)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self._ids[i], float(scores[i])) for i in top]
