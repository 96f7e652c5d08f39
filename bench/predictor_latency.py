"""SPS predict latency with thousands of stored prompts (embedded Qdrant), stage by stage, on this machine.

Stores `--stored` corpus prompts (5,000 by default) with their real prefill activation from the served model,
then times `Predictor.predict` on `--queries` held-out prompts: embed (MiniLM), search (Qdrant top-M), re-rank
(soft cosine over the candidates + weighted average). A second store holds the same prompts with
DeepSeek-V2-Lite-shaped records (26 MoE layers x 64 experts, seeded counts) to show what a big model's
payload adds, and each embedding backend (onnx-int8, the default; onnx; torch) gets its own row.
Writes predictor_latency.{json,md} under --out.

Usage: python bench/predictor_latency.py --model DIR --train FILE --test FILE [--stored 5000] [--queries 300]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the predictor service sets it (see its module)

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from remoe.corpus.build import read_prompts  # noqa: E402
from remoe.machine import machine_description  # noqa: E402
from remoe.model.activations import ActivationRecord  # noqa: E402
from remoe.model.engine import LocalEngine  # noqa: E402
from remoe.predictor.embedding import PromptEmbedder  # noqa: E402
from remoe.predictor.predictor import Predictor, SPSConfig  # noqa: E402
from remoe.predictor.prior import InMemoryPrior  # noqa: E402
from remoe.predictor.soft_cosine import SCS_TOKENS, SoftCosine  # noqa: E402
from remoe.predictor.store import PromptStore  # noqa: E402

BATCH = 64


@dataclass
class Row:
    records: str
    embedding_backend: str
    stored: int
    queries: int
    p50_ms: float
    p99_ms: float
    embed_ms_p50: float
    search_ms_p50: float
    rerank_ms_p50: float
    sps_share: float  # forecasts that came from SPS (not a fallback)


def _records_of_model(engine: LocalEngine, ids: list[list[int]]) -> list[ActivationRecord]:
    return [
        engine.generate(token_ids=t or [0], max_new_tokens=1).activations
        for t in tqdm(ids, desc="activations", unit="prompt")
    ]


def _synthetic_records(n: int, layers: int, experts: int, top_k: int, lengths: list[int]) -> list[ActivationRecord]:
    g = np.random.default_rng(0)
    out = []
    for i in range(n):
        record = ActivationRecord(list(range(1, layers + 1)), experts, top_k, n_in=lengths[i], n_out=1)
        for layer in range(layers):
            record.prefill[layer] = g.multinomial(lengths[i] * top_k, g.dirichlet(np.ones(experts) * 0.3))
        out.append(record)
    return out


def _fill(store: PromptStore, embeddings, ids, records, soft_cosine: SoftCosine) -> None:
    for start in tqdm(range(0, len(ids), BATCH), desc="store", unit="batch"):
        store.add_many(
            [
                (embeddings[i], ids[i], records[i], soft_cosine.self_norm(ids[i]))
                for i in range(start, min(len(ids), start + BATCH))
            ]
        )


def _time(predictor: Predictor, queries: list[tuple[str, list[int]]], label: str, backend: str, stored: int) -> Row:
    for prompt, ids in queries[:10]:  # warm-up
        predictor.predict(prompt, ids)
    totals, stages, sps = [], {"embed": [], "search": [], "rerank": []}, 0
    for prompt, ids in queries:
        start = time.perf_counter()
        forecast = predictor.predict(prompt, ids)
        totals.append((time.perf_counter() - start) * 1e3)
        sps += forecast.source == "sps"
        for name, ms in forecast.timings_ms.items():
            stages[name].append(ms)
    med = {k: round(statistics.median(v), 2) if v else 0.0 for k, v in stages.items()}
    return Row(
        label,
        backend,
        stored,
        len(queries),
        round(float(np.percentile(totals, 50)), 2),
        round(float(np.percentile(totals, 99)), 2),
        med["embed"],
        med["search"],
        med["rerank"],
        round(sps / len(queries), 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the served model (its records and tokens)")
    parser.add_argument("--train", type=Path, required=True, help="prompts to store")
    parser.add_argument("--test", type=Path, required=True, help="prompts to forecast")
    parser.add_argument("--stored", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()

    train = read_prompts(args.train)[: args.stored]
    test = read_prompts(args.test)[: args.queries]
    engine = LocalEngine(args.model, device="cpu", dtype=torch.float32)
    arch = engine.backbone.arch
    soft_cosine = SoftCosine(engine.model.get_input_embeddings().weight)
    train_ids = [engine.encode(p)[:SCS_TOKENS] for p in train]
    queries = [(p, engine.encode(p)[:SCS_TOKENS]) for p in test]
    real = _records_of_model(engine, train_ids)
    big = _synthetic_records(len(train), 26, 64, 6, [max(1, len(t)) for t in train_ids])
    own = (f"{arch.model_type} {len(arch.layer_indices)}x{arch.num_experts} (measured)", real, arch.layer_indices)
    deepseek = ("DeepSeek-V2-Lite-shaped 26x64 (seeded counts)", big, list(range(1, 27)))
    runs = [("onnx-int8", own), ("onnx-int8", deepseek), ("onnx", own), ("torch", own)]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in dict.fromkeys(b for b, _ in runs):
            embedder = PromptEmbedder(backend)
            embeddings = [  # stored with the same backend that embeds the queries
                e
                for i in tqdm(range(0, len(train), BATCH), desc=f"embed ({backend})", unit="batch")
                for e in embedder.embed(train[i : i + BATCH]).tolist()
            ]
            for label, records, layers in [r for b, r in runs if b == backend]:
                experts = records[0].num_experts
                store = PromptStore.open("bench", path=f"{tmp}/{len(rows)}")
                _fill(store, embeddings, train_ids, records, soft_cosine)
                predictor = Predictor(
                    layers, experts, embedder, soft_cosine, store, InMemoryPrior(len(layers), experts), SPSConfig()
                )
                rows.append(_time(predictor, queries, label, backend, store.count()))
                store.close()

    machine = machine_description()
    lines = [
        "# SPS predict latency (embedded Qdrant)",
        "",
        f"Machine: {machine}. One process, one query at a time; {args.queries} held-out corpus prompts; "
        f"SPSConfig defaults {asdict(SPSConfig())}. Stage times are medians.",
        "",
        "| stored records | embedding | stored | p50 (ms) | p99 (ms) | embed (ms) | search (ms) | re-rank (ms) "
        "| from SPS |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r.records} | {r.embedding_backend} | {r.stored} | {r.p50_ms} | {r.p99_ms} | {r.embed_ms_p50} "
            f"| {r.search_ms_p50} | {r.rerank_ms_p50} | {r.sps_share:.0%} |"
            for r in rows
        ],
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictor_latency.md").write_text(table)
    (args.out / "predictor_latency.json").write_text(
        json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2)
    )


if __name__ == "__main__":
    main()
