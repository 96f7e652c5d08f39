"""The embeddings of prompts predicted for and not yet recorded: a request's Predict embeds its prompt, its Record
(when the request has finished) takes that vector back instead of running the embedding model a second time."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

DEFAULT_CAPACITY = 1024  # requests in flight at once, with room to spare (384 floats each)


class PendingEmbeddings:
    """A bounded map from a prompt to its embedding. `take` removes the entry, so a prompt sent again is embedded
    again by its own Predict: each request pays for one embedding, never for none."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[bytes, list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self.reused = 0  # Records that took their request's vector

    @staticmethod
    def _key(prompt: str) -> bytes:
        return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()  # prompts can be MBs

    def put(self, prompt: str, embedding: list[float]) -> None:
        key = self._key(prompt)
        with self._lock:
            self._entries[key] = embedding
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)  # the oldest: a request that never recorded (failed, cancelled)

    def take(self, prompt: str) -> list[float] | None:
        with self._lock:
            embedding = self._entries.pop(self._key(prompt), None)
            self.reused += embedding is not None
            return embedding

    def __len__(self) -> int:
        return len(self._entries)
