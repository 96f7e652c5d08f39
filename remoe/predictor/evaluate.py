"""`remoe predictor eval`: how well forecasts match real prefill activation, SPS vs the baselines.

Ingest the train prompts (their actual prefill activation, measured by running the model, becomes the
store), then forecast each test prompt with every method and compare with its actual activation:
- SPS: Qdrant top-M by embedding, soft-cosine re-rank, top alpha, softmax(SCS / temperature) average
- EF: equal frequency; global: the train set's total activation (what the Redis prior holds)
- nearest: the single most similar train prompt by embedding
- BF: brute-force soft cosine over the whole train set (top alpha, softmax average), no embedding step
- embedding top-k: the alpha nearest by embedding, softmax(cosine / temperature), no SCS re-rank
Reports mean JS divergence (mean over layers, averaged over prompts), the recall of the top-k forecast
experts per layer, and SPS predict latency p50/p99.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from remoe.machine import machine_description
from remoe.model.engine import LocalEngine
from remoe.predictor.divergence import js_divergence
from remoe.predictor.embedding import PromptEmbedder
from remoe.predictor.predictor import Predictor, SPSConfig
from remoe.predictor.prior import InMemoryPrior
from remoe.predictor.soft_cosine import SCS_TOKENS, SoftCosine
from remoe.predictor.store import PromptStore

METHODS = ["SPS", "EF", "global", "nearest", "BF", "embedding top-k"]
INGEST_BATCH = 32


@dataclass
class MethodScore:
    method: str
    js_mean: float
    js_p90: float
    recall_top_k: float


@dataclass
class EvalReport:
    model: str
    train_prompts: int
    test_prompts: int
    scores: list[MethodScore]
    sps_predict_ms_p50: float
    sps_predict_ms_p99: float
    config: dict = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            "| method | mean JS divergence | p90 JS | top-k recall |",
            "|---|---|---|---|",
            *[f"| {s.method} | {s.js_mean:.4f} | {s.js_p90:.4f} | {s.recall_top_k:.3f} |" for s in self.scores],
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table with what it was measured on: model, sizes, settings, machine, date."""
        by = {s.method: s.js_mean for s in self.scores}
        verdict = (
            f"SPS vs EF: {by['SPS'] / by['EF']:.2f}x, vs global: {by['SPS'] / by['global']:.2f}x, "
            f"vs brute force: {by['SPS'] / by['BF']:.2f}x (mean JS; lower is better)."
        )
        return "\n".join(
            [
                f"# Forecast accuracy: {self.model}",
                "",
                f"{self.train_prompts} stored prompts, {self.test_prompts} held-out test prompts; settings "
                f"{ {k: v for k, v in self.config.items() if k not in ('machine', 'date')} }. "
                f"Machine: {self.config.get('machine', '?')}; {self.config.get('date', '')}.",
                "",
                self.table(),
                "",
                verdict,
                "",
                f"SPS predict latency inside the evaluation (shares the process with the model): "
                f"p50 {self.sps_predict_ms_p50:.1f} ms, p99 {self.sps_predict_ms_p99:.1f} ms; "
                "bench/predictor_latency.py measures it on its own.",
                "",
            ]
        )

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> EvalReport:
        return cls(**{**raw, "scores": [MethodScore(**s) for s in raw["scores"]]})


def _recall(forecast: np.ndarray, actual: np.ndarray, k: int) -> float:
    top_forecast = np.argsort(-forecast, axis=1)[:, :k]
    top_actual = np.argsort(-actual, axis=1)[:, :k]
    return float(np.mean([len(set(f) & set(a)) / k for f, a in zip(top_forecast, top_actual, strict=True)]))


def _softmax_average(freqs: list[np.ndarray], scores: torch.Tensor, temperature: float) -> np.ndarray:
    weights = torch.softmax(scores / temperature, dim=0).numpy()
    return sum(w * f for w, f in zip(weights, freqs, strict=True))


def evaluate(
    model_dir: str,
    train: list[str],
    test: list[str],
    config: SPSConfig | None = None,
    progress: bool = True,
    embedding_backend: str | None = None,
) -> EvalReport:
    config = config or SPSConfig()
    engine = LocalEngine(model_dir, device="cpu", dtype=torch.float32)
    arch = engine.backbone.arch
    layers, k = arch.layer_indices, arch.top_k
    embedding_weight = engine.model.get_input_embeddings().weight
    soft_cosine = SoftCosine(embedding_weight)
    embedder = PromptEmbedder(embedding_backend)

    def measure(prompt: str):
        ids = engine.encode(prompt)[:SCS_TOKENS] or [0]
        return ids, engine.generate(token_ids=ids, max_new_tokens=1).activations

    with tempfile.TemporaryDirectory() as tmp:
        store = PromptStore.open("eval", path=tmp)
        prior = InMemoryPrior(len(layers), arch.num_experts)  # SPS falls back to it on weak matches, as in serving
        predictor = Predictor(layers, arch.num_experts, embedder, soft_cosine, store, prior, config)
        train_ids, train_freqs, train_embeddings = [], [], []
        bar = tqdm(total=len(train), desc="ingest", unit="prompt", disable=not progress)
        for start in range(0, len(train), INGEST_BATCH):
            chunk = train[start : start + INGEST_BATCH]
            embeddings = embedder.embed(chunk).tolist()  # [B, D]: batched, far cheaper than one by one
            measured = [measure(prompt) for prompt in chunk]
            store.add_many(
                [(e, ids, rec, soft_cosine.self_norm(ids)) for e, (ids, rec) in zip(embeddings, measured, strict=True)]
            )
            for embedding, (ids, record) in zip(embeddings, measured, strict=True):
                prior.add(record.prefill)
                train_ids.append(ids)
                train_freqs.append(record.prefill_frequency())
                train_embeddings.append(embedding)
            bar.update(len(chunk))
        bar.close()
        global_freq = prior.frequency()
        train_bags = soft_cosine.bags(train_ids)  # BF scores every test prompt against all of them
        matrix = torch.tensor(train_embeddings)  # [N, D]

        js = {m: [] for m in METHODS}
        recall = {m: [] for m in METHODS}
        latency = []
        for prompt in tqdm(test, desc="forecast", unit="prompt", disable=not progress):
            ids, record = measure(prompt)
            actual = record.prefill_frequency()
            start = time.perf_counter()
            sps = predictor.predict(prompt, ids).frequency
            latency.append((time.perf_counter() - start) * 1e3)
            query = torch.tensor(embedder.embed_one(prompt))
            cosine = matrix @ query  # [N]
            nearest = torch.topk(cosine, min(config.alpha, len(train)))
            scs_all = soft_cosine.against(ids, train_bags)  # [N]
            best = torch.topk(scs_all, min(config.alpha, len(train)))
            forecasts = {
                "SPS": sps,
                "EF": np.full(actual.shape, 1.0 / actual.shape[1]),
                "global": global_freq,
                "nearest": train_freqs[int(nearest.indices[0])],
                "BF": _softmax_average(
                    [train_freqs[i] for i in best.indices.tolist()], best.values, config.temperature
                ),
                "embedding top-k": _softmax_average(
                    [train_freqs[i] for i in nearest.indices.tolist()], nearest.values, config.temperature
                ),
            }
            for method, forecast in forecasts.items():
                js[method].append(float(js_divergence(forecast, actual).mean()))
                recall[method].append(_recall(forecast, actual, k))
        store.close()

    scores = [
        MethodScore(m, statistics.fmean(js[m]), float(np.percentile(js[m], 90)), statistics.fmean(recall[m]))
        for m in METHODS
    ]
    return EvalReport(
        model=str(model_dir),
        train_prompts=len(train),
        test_prompts=len(test),
        scores=scores,
        sps_predict_ms_p50=float(np.percentile(latency, 50)),
        sps_predict_ms_p99=float(np.percentile(latency, 99)),
        config={
            **asdict(config),
            "embedding_backend": embedder.backend,
            "machine": machine_description(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
    )


def plot(report: EvalReport, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [s.method for s in report.scores]
    values = [s.js_mean for s in report.scores]
    bars = ax.bar(names, values, color=["#2a6f97" if n == "SPS" else "#999999" for n in names])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylabel("mean JS divergence (lower is better)")
    model = Path(report.model).name
    ax.set_title(f"{model}: forecast vs actual prefill activation ({report.test_prompts} test prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
