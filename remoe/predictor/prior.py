"""The global activation prior: prefill token counts per (layer, expert) over every recorded request, kept as
a Redis hash so every predictor replica shares it. Never fails a caller: errors are logged and counted."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import redis

log = logging.getLogger(__name__)


def model_id(model_type: str, checkpoint: Path) -> str:
    """The key of a model's prompt store and prior, stable across restarts: its type and its path."""
    return f"{model_type}-{hashlib.sha1(str(checkpoint.resolve()).encode()).hexdigest()[:12]}"


class GlobalPrior:
    def __init__(self, client: redis.Redis, model_id: str, num_layers: int, num_experts: int) -> None:
        self.client = client
        self.key = f"remoe:prior:{model_id}"
        self.shape = (num_layers, num_experts)
        self.errors = 0

    @classmethod
    def from_url(cls, url: str, model_id: str, num_layers: int, num_experts: int) -> GlobalPrior:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        return cls(client, model_id, num_layers, num_experts)

    def add(self, prefill_counts: np.ndarray) -> bool:
        """Add one request's [L, E] prefill counts; False (logged, counted) when Redis is unreachable."""
        pipe = self.client.pipeline()
        for (layer, expert), n in np.ndenumerate(prefill_counts):
            if n:
                pipe.hincrby(self.key, f"{layer}:{expert}", int(n))
        try:
            pipe.execute()
            return True
        except redis.RedisError as e:
            self.errors += 1
            log.warning("global prior not updated (%s)", e)
            return False

    def frequency(self) -> np.ndarray | None:
        """[L, E] with rows summing to 1, or None when nothing is recorded or Redis is unreachable."""
        try:
            raw = self.client.hgetall(self.key)
        except redis.RedisError as e:
            self.errors += 1
            log.warning("global prior unavailable (%s)", e)
            return None
        if not raw:
            return None
        counts = np.zeros(self.shape)
        for field, value in raw.items():
            layer, expert = (int(x) for x in field.decode().split(":"))
            if layer < self.shape[0] and expert < self.shape[1]:
                counts[layer, expert] = int(value)
        totals = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, totals, out=np.full(self.shape, 1.0 / self.shape[1]), where=totals > 0)


class InMemoryPrior:
    """The same prior without Redis (offline evaluation, single process)."""

    def __init__(self, num_layers: int, num_experts: int) -> None:
        self.counts = np.zeros((num_layers, num_experts))
        self.errors = 0

    def add(self, prefill_counts: np.ndarray) -> bool:
        self.counts += prefill_counts
        return True

    def frequency(self) -> np.ndarray | None:
        totals = self.counts.sum(axis=1, keepdims=True)
        if not totals.any():
            return None
        return np.divide(
            self.counts, totals, out=np.full(self.counts.shape, 1.0 / self.counts.shape[1]), where=totals > 0
        )
