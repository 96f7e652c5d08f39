"""The prompt store: one Qdrant collection per model; each point is one prompt's embedding, its token ids
and its activation record. Embedded Qdrant on a path by default (one process per path), or a server by URL
with the same code."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from qdrant_client import QdrantClient, models

from remoe.model.activations import ActivationRecord
from remoe.predictor.embedding import EMBEDDING_DIM


@dataclass(slots=True)
class StoredPrompt:
    score: float  # cosine similarity of the embeddings
    token_ids: list[int]
    record: ActivationRecord


def collection_name(model_id: str) -> str:
    return "remoe-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")[:200]


class PromptStore:
    def __init__(self, client: QdrantClient, model_id: str) -> None:
        self.client = client
        self.model_id = model_id
        self.collection = collection_name(model_id)
        self._ready = False  # the collection is made on first use, so a server that is down fails calls, not start

    def _ensure_collection(self) -> None:
        if self._ready:
            return
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=EMBEDDING_DIM, distance=models.Distance.COSINE),
            )
        self._ready = True

    @classmethod
    def open(cls, model_id: str, path: str | None = None, url: str | None = None) -> PromptStore:
        if (path is None) == (url is None):
            raise ValueError("give exactly one of a local path (embedded Qdrant) and a server URL")
        client = QdrantClient(path=path) if path else QdrantClient(url=url, timeout=2, check_compatibility=False)
        return cls(client, model_id)

    def add(self, embedding: list[float], token_ids: list[int], record: ActivationRecord) -> str:
        self._ensure_collection()
        point_id = str(uuid.uuid4())
        payload = {"model": self.model_id, "time": time.time(), "token_ids": list(token_ids), **record.to_dict()}
        self.client.upsert(self.collection, points=[models.PointStruct(id=point_id, vector=embedding, payload=payload)])
        return point_id

    def nearest(self, embedding: list[float], limit: int) -> list[StoredPrompt]:
        self._ensure_collection()
        hits = self.client.query_points(self.collection, query=embedding, limit=limit, with_payload=True).points
        return [StoredPrompt(h.score, h.payload["token_ids"], ActivationRecord.from_dict(h.payload)) for h in hits]

    def count(self) -> int:
        self._ensure_collection()
        return self.client.count(self.collection).count

    def close(self) -> None:
        self.client.close()
