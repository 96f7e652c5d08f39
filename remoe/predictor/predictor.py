"""SPS: embed the prompt, take the top-M similar stored prompts from Qdrant, re-rank them by Soft Cosine
Similarity over the model's token embeddings, keep the top alpha, and average their prefill frequency
matrices with softmax(SCS / temperature) weights. With an empty store or weak matches: the global prior
from Redis; without that either: equal frequency. Predict never raises: every fallback is logged and counted.

L = MoE layers, E = experts per layer.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from remoe.model.activations import ActivationRecord
from remoe.predictor.embedding import PromptEmbedder
from remoe.predictor.pending_embeddings import PendingEmbeddings
from remoe.predictor.prior import GlobalPrior, InMemoryPrior
from remoe.predictor.soft_cosine import SCS_TOKENS, SoftCosine
from remoe.predictor.store import PromptStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SPSConfig:
    candidates: int = 50  # M: nearest prompts fetched from Qdrant by embedding
    alpha: int = 15  # kept after the SCS re-rank (the paper's alpha)
    # softmax(SCS / temperature). The paper writes softmax(SCS), i.e. 1.0; but SCS lies in [0, 1] and the top
    # alpha neighbours are all fairly similar, so at 1.0 their weights are nearly equal and an identical past
    # prompt barely counts more than a loose match. 0.05 lets closer neighbours dominate (tune with eval).
    temperature: float = 0.05
    min_similarity: float = 0.3  # below this best embedding similarity the matches are "weak": use the prior

    def __post_init__(self) -> None:
        if not 1 <= self.alpha <= self.candidates:
            raise ValueError(f"need 1 <= alpha ({self.alpha}) <= candidates ({self.candidates})")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass(slots=True)
class Forecast:
    frequency: np.ndarray  # [L, E], each row sums to 1: expected share of a layer's routed slots per expert
    confidence: float  # 0..1: mean SCS of the neighbours used (0 for fallbacks)
    source: str  # "sps", "prior" or "equal"
    neighbours: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)  # embed, search, rerank


@dataclass
class PredictorCounters:
    predictions: int = 0
    by_source: Counter = field(default_factory=Counter)
    store_errors: int = 0


class Predictor:
    def __init__(
        self,
        moe_layers: list[int],
        num_experts: int,
        embedder: PromptEmbedder,
        soft_cosine: SoftCosine,
        store: PromptStore | None,
        prior: GlobalPrior | InMemoryPrior | None,
        config: SPSConfig | None = None,
    ) -> None:
        self.shape = (len(moe_layers), num_experts)
        self.embedder = embedder
        self.soft_cosine = soft_cosine
        self.store = store
        self.prior = prior
        self.config = config or SPSConfig()
        self.counters = PredictorCounters()
        self.pending = PendingEmbeddings()  # Predict's vectors, taken back by the same prompt's Record

    def _fallback(self) -> Forecast:
        prior = self.prior.frequency() if self.prior is not None else None
        if prior is not None:
            return Forecast(prior, 0.0, "prior")
        return Forecast(np.full(self.shape, 1.0 / self.shape[1]), 0.0, "equal")

    def predict(self, prompt: str, token_ids: list[int]) -> Forecast:
        forecast = self._predict(prompt, token_ids)
        self.counters.predictions += 1
        self.counters.by_source[forecast.source] += 1
        return forecast

    def _predict(self, prompt: str, token_ids: list[int]) -> Forecast:
        if self.store is None or not token_ids:
            return self._fallback()
        clock = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = (now - clock) * 1e3
            clock = now

        try:
            embedding = self.embedder.embed_one(prompt)
            self.pending.put(prompt, embedding)
            lap("embed")
            hits = self.store.nearest(embedding, self.config.candidates)
            lap("search")
        except Exception as e:  # Qdrant down or broken: the request must still be planned
            self.counters.store_errors += 1
            log.warning("prompt store unavailable, using the prior (%s)", e)
            return self._fallback()
        hits = [h for h in hits if h.record.prefill.shape == self.shape]
        if not hits or max(h.score for h in hits) < self.config.min_similarity:
            return self._fallback()
        bags = self.soft_cosine.bags([h.token_ids for h in hits], [h.scs_norm for h in hits])
        scs = self.soft_cosine.against(token_ids, bags)  # [M]
        top = torch.topk(scs, min(self.config.alpha, len(hits)))
        weights = torch.softmax(top.values / self.config.temperature, dim=0).numpy()  # [alpha]
        frequency = sum(
            w * hits[i].record.prefill_frequency() for w, i in zip(weights, top.indices.tolist(), strict=True)
        )
        lap("rerank")
        return Forecast(frequency, float(top.values.mean()), "sps", len(weights), timings)

    def record(self, prompt: str, token_ids: list[int], activation: ActivationRecord) -> None:
        """Learn from a finished request: a point in the store and counts in the global prior."""
        if self.prior is not None:
            self.prior.add(activation.prefill)
        if self.store is None:
            return
        try:
            ids = token_ids[:SCS_TOKENS]
            embedding = self.pending.take(prompt) or self.embedder.embed_one(prompt)
            self.store.add(embedding, ids, activation, self.soft_cosine.self_norm(ids))
        except Exception as e:
            self.counters.store_errors += 1
            log.warning("prompt store unavailable, activation not stored (%s)", e)
