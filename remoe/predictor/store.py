"""The prompt store: one Qdrant collection per model; each point is one prompt's embedding, its token ids
and its activation record. Embedded Qdrant on a path by default (one process per path), or a server by URL
with the same code.

Points never change once written, so each process keeps the decoded payloads it has seen (an LRU of
`cache_size` points) and asks Qdrant for ids and scores only: with a DeepSeek-sized record (26 x 64 counts
twice) copying and decoding 50 payloads per query cost 70 ms, the vector search itself about 1 ms.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from qdrant_client import QdrantClient, models

from remoe.model.activations import ActivationRecord
from remoe.predictor.embedding import EMBEDDING_DIM
from remoe.predictor.vector_index import ExactIndex


@dataclass(slots=True)
class StoredPrompt:
    score: float  # cosine similarity of the embeddings
    token_ids: list[int]
    record: ActivationRecord
    scs_norm: float | None = None  # the soft cosine's sqrt(b^T S b) for these tokens, computed when stored


def collection_name(model_id: str) -> str:
    return "remoe-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")[:200]


def _stored(score: float, payload: dict) -> StoredPrompt:
    return StoredPrompt(score, payload["token_ids"], ActivationRecord.from_dict(payload), payload.get("scs_norm"))


class PromptStore:
    def __init__(self, client: QdrantClient, model_id: str, cache_size: int = 20_000, local: bool = False) -> None:
        self.client = client
        self.model_id = model_id
        self.collection = collection_name(model_id)
        self._ready = False  # the collection is made on first use, so a server that is down fails calls, not start
        self._cache: OrderedDict[str, StoredPrompt] = OrderedDict()  # point id -> decoded payload (score unset)
        self.cache_size = cache_size
        # Embedded Qdrant: search a mirror of the vectors in this process (vector_index.py says why).
        self._index: ExactIndex | None = ExactIndex(EMBEDDING_DIM) if local else None
        self._lock = threading.Lock()  # the service records and predicts from several threads

    def _remember(self, point_id: str, prompt: StoredPrompt) -> None:
        with self._lock:
            self._cache[point_id] = prompt
            self._cache.move_to_end(point_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _ensure_collection(self) -> None:
        if self._ready:
            return
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=EMBEDDING_DIM, distance=models.Distance.COSINE),
            )
        elif self._index is not None:
            self._load_mirror()
        self._ready = True

    def _load_mirror(self) -> None:
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection, limit=1024, offset=offset, with_payload=True, with_vectors=True
            )
            self._index.add([str(p.id) for p in points], [p.vector for p in points])
            for p in points[-self.cache_size :]:
                self._remember(str(p.id), _stored(0.0, p.payload))
            if offset is None:
                return

    @classmethod
    def open(cls, model_id: str, path: str | None = None, url: str | None = None) -> PromptStore:
        if (path is None) == (url is None):
            raise ValueError("give exactly one of a local path (embedded Qdrant) and a server URL")
        if path:
            return cls(QdrantClient(path=path), model_id, local=True)
        return cls(QdrantClient(url=url, timeout=2, check_compatibility=False), model_id)

    def add(
        self, embedding: list[float], token_ids: list[int], record: ActivationRecord, scs_norm: float | None = None
    ) -> str:
        return self.add_many([(embedding, token_ids, record, scs_norm)])[0]

    def add_many(self, items: list[tuple[list[float], list[int], ActivationRecord, float | None]]) -> list[str]:
        """One upsert for many prompts (bulk ingest): [(embedding, token_ids, record, scs_norm), ...] -> ids."""
        self._ensure_collection()
        points = [
            models.PointStruct(
                id=str(uuid.uuid4()),
                vector=embedding,
                payload={
                    "model": self.model_id,
                    "time": time.time(),
                    "token_ids": list(ids),
                    "scs_norm": norm,
                    **record.to_dict(),
                },
            )
            for embedding, ids, record, norm in items
        ]
        self.client.upsert(self.collection, points=points)
        if self._index is not None:
            with self._lock:
                self._index.add([str(p.id) for p in points], [p.vector for p in points])
        for point in points:
            self._remember(str(point.id), _stored(0.0, point.payload))
        return [str(p.id) for p in points]

    def nearest(self, embedding: list[float], limit: int) -> list[StoredPrompt]:
        self._ensure_collection()
        if self._index is not None:
            with self._lock:
                hits = self._index.search(embedding, limit)
        else:
            points = self.client.query_points(self.collection, query=embedding, limit=limit, with_payload=False).points
            hits = [(str(p.id), p.score) for p in points]
        with self._lock:
            found = {point_id: self._cache.get(point_id) for point_id, _ in hits}
        missing = [point_id for point_id, prompt in found.items() if prompt is None]
        if missing:
            for point in self.client.retrieve(self.collection, ids=missing, with_payload=True):
                found[str(point.id)] = _stored(0.0, point.payload)
                self._remember(str(point.id), found[str(point.id)])
        return [
            StoredPrompt(score, found[point_id].token_ids, found[point_id].record, found[point_id].scs_norm)
            for point_id, score in hits
            if found.get(point_id) is not None
        ]

    def count(self) -> int:
        self._ensure_collection()
        return self.client.count(self.collection).count

    def close(self) -> None:
        self.client.close()
