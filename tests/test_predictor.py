"""SPS predictor over embedded Qdrant and a real Redis: forecasts, fallbacks, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import redis
import torch

from remoe.model.activations import ActivationRecord
from remoe.predictor.embedding import EMBEDDING_DIM, PromptEmbedder
from remoe.predictor.predictor import Predictor, SPSConfig
from remoe.predictor.prior import GlobalPrior
from remoe.predictor.soft_cosine import SoftCosine
from remoe.predictor.store import PromptStore
from remoe.predictor.vector_index import ExactIndex

LAYERS, EXPERTS, TOP_K = [0, 1], 4, 2


@pytest.fixture(scope="module")
def embedder():
    return PromptEmbedder()


@pytest.fixture(scope="module")
def soft_cosine():
    torch.manual_seed(0)
    return SoftCosine(torch.randn(100, 16))


def _record(hot: int, n_in: int = 5) -> ActivationRecord:
    """Every token of both layers goes to expert `hot` and the next one."""
    record = ActivationRecord(LAYERS, EXPERTS, TOP_K, n_in=n_in, n_out=1)
    record.prefill[:, hot] = n_in
    record.prefill[:, (hot + 1) % EXPERTS] = n_in
    return record


def test_embeddings_are_unit_vectors_and_meaningful(embedder):
    v = embedder.embed(["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly tax filing deadline."])
    assert v.shape == (3, EMBEDDING_DIM)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_soft_cosine_is_one_for_the_same_bag_and_symmetric(soft_cosine):
    assert soft_cosine.similarity([1, 2, 3], [3, 2, 1]) == pytest.approx(1.0)
    a, b = [1, 2, 3, 4], [5, 6, 7]
    assert soft_cosine.similarity(a, b) == pytest.approx(soft_cosine.similarity(b, a))
    assert soft_cosine.similarity(a, b) < soft_cosine.similarity(a, [1, 2, 3, 9])


def _dense_soft_cosine(unit: torch.Tensor, a: list[int], b: list[int]) -> float:
    """The paper's formula over the whole vocabulary, no shortcuts."""
    gram = (unit @ unit.T).clamp(min=0.0)  # [V, V]
    va = torch.bincount(torch.tensor(a), minlength=len(unit)).float()
    vb = torch.bincount(torch.tensor(b), minlength=len(unit)).float()
    return float(va @ gram @ vb / torch.sqrt((va @ gram @ va) * (vb @ gram @ vb)))


def test_soft_cosine_equals_the_dense_formula_with_stored_and_computed_norms(soft_cosine):
    g = torch.Generator().manual_seed(1)
    query = torch.randint(0, 100, (30,), generator=g).tolist()
    candidates = [torch.randint(0, 100, (int(n),), generator=g).tolist() for n in (1, 5, 40, 17)]
    unit = torch.nn.functional.normalize(soft_cosine.embeddings, dim=-1)  # [V, H], the whole table at once
    expected = torch.tensor([_dense_soft_cosine(unit, query, c) for c in candidates])
    torch.testing.assert_close(soft_cosine.many(query, candidates), expected)
    stored = [soft_cosine.self_norm(c) for c in candidates]  # as the store keeps them
    torch.testing.assert_close(soft_cosine.against(query, soft_cosine.bags(candidates, stored)), expected)
    assert soft_cosine.many(query, [[]]).tolist() == [0.0]  # an empty candidate matches nothing, no NaN


def _resident_anon_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


def test_soft_cosine_holds_only_the_rows_prompts_used_with_the_bits_of_the_whole_table():
    """A float32 unit copy of the whole table held 0.84 GB for DeepSeek-V2-Lite's vocabulary; rows are now made
    unit when first used, bit for bit what normalizing the whole table gives."""
    table = torch.randn(40_000, 512, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)  # 39 MiB
    before = _resident_anon_mib()
    scs = SoftCosine(table)
    prompts = [[1, 5, 9, 5], [2, 5, 39_999], [7]]
    values = [scs.similarity(a, b) for a in prompts for b in prompts]
    grown = _resident_anon_mib() - before
    assert grown < 8, f"{grown:.0f} MiB held for 5 rows of a 78 MiB float32 table"
    whole = torch.nn.functional.normalize(table.float(), dim=-1)
    used = torch.tensor([1, 2, 5, 7, 9, 39_999])
    assert torch.equal(scs.unit(used), whole[used])
    assert values == [SoftCosine(table).similarity(a, b) for a in prompts for b in prompts]  # fills in any order


def _predictor(tmp_path, embedder, soft_cosine, redis_url, model_id="m"):
    store = PromptStore.open(model_id, path=str(tmp_path / "qdrant"))
    prior = GlobalPrior.from_url(redis_url, model_id, len(LAYERS), EXPERTS)
    return Predictor(LAYERS, EXPERTS, embedder, soft_cosine, store, prior, SPSConfig(candidates=10, alpha=3))


def test_similar_prompts_forecast_their_experts(tmp_path, embedder, soft_cosine, redis_url):
    predictor = _predictor(tmp_path, embedder, soft_cosine, redis_url, "similar")
    examples = {
        "Write a poem about the sea and the wind": ([10, 11, 12], 0),
        "Compose a short poem about ocean waves": ([10, 11, 13], 0),
        "SELECT name FROM users WHERE id = 3": ([50, 51, 52], 2),
        "SELECT price FROM products ORDER BY price": ([50, 53, 52], 2),
    }
    for prompt, (ids, hot) in examples.items():
        predictor.record(prompt, ids, _record(hot))
    forecast = predictor.predict("A poem about the sea at night", [10, 11, 14])
    assert forecast.source == "sps" and forecast.neighbours == 3
    np.testing.assert_allclose(forecast.frequency.sum(axis=1), 1.0)
    assert forecast.frequency[:, :2].sum() > forecast.frequency[:, 2:].sum(), forecast.frequency
    sql = predictor.predict("SELECT id FROM orders WHERE total > 10", [50, 51, 55])
    assert sql.frequency[:, 2:].sum() > sql.frequency[:, :2].sum(), sql.frequency


def test_empty_store_falls_back_to_the_global_prior_then_equal_frequency(tmp_path, embedder, soft_cosine, redis_url):
    predictor = _predictor(tmp_path, embedder, soft_cosine, redis_url, "empty")
    first = predictor.predict("anything", [1, 2])
    assert first.source == "equal"
    np.testing.assert_allclose(first.frequency, np.full((2, 4), 0.25))
    predictor.prior.add(_record(1).prefill)
    predictor.store = PromptStore.open("other", path=str(tmp_path / "qdrant2"))  # still empty
    second = predictor.predict("anything", [1, 2])
    assert second.source == "prior"
    np.testing.assert_allclose(second.frequency, [[0, 0.5, 0.5, 0], [0, 0.5, 0.5, 0]])


@pytest.mark.slow
def test_qdrant_and_redis_down_never_fail_a_prediction(embedder, soft_cosine):
    store = PromptStore.open("m", url="http://127.0.0.1:9")  # nothing listens there
    prior = GlobalPrior(redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2), "m", 2, 4)
    predictor = Predictor(LAYERS, EXPERTS, embedder, soft_cosine, store, prior)
    forecast = predictor.predict("hello", [1, 2])
    assert forecast.source == "equal"
    predictor.record("hello", [1, 2], _record(0))  # must not raise either
    assert predictor.counters.store_errors == 2 and prior.errors >= 2


def test_the_store_persists_across_restarts(tmp_path, embedder):
    path = str(tmp_path / "persist")
    store = PromptStore.open("m", path=path)
    store.add(embedder.embed_one("hello world"), [1, 2, 3], _record(3))
    store.close()
    again = PromptStore.open("m", path=path)
    assert again.count() == 1
    hit = again.nearest(embedder.embed_one("hello world"), 1)[0]
    assert hit.token_ids == [1, 2, 3] and hit.score == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(hit.record.prefill, _record(3).prefill)
    again.close()


def test_the_in_process_index_finds_what_qdrant_finds(tmp_path):
    from qdrant_client import QdrantClient, models

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, EMBEDDING_DIM)).astype(np.float32)
    client = QdrantClient(path=str(tmp_path / "q"))
    client.create_collection(
        "c", vectors_config=models.VectorParams(size=EMBEDDING_DIM, distance=models.Distance.COSINE)
    )
    client.upsert("c", points=[models.PointStruct(id=i, vector=v.tolist()) for i, v in enumerate(vectors)])
    index = ExactIndex(EMBEDDING_DIM)
    index.add([str(i) for i in range(100)], vectors[:100].tolist())  # grows across calls
    index.add([str(i) for i in range(100, 300)], vectors[100:].tolist())
    for query in rng.standard_normal((5, EMBEDDING_DIM)):
        expected = client.query_points("c", query=query.tolist(), limit=20).points
        got = index.search(query.tolist(), 20)
        assert [g[0] for g in got] == [str(p.id) for p in expected]
        np.testing.assert_allclose([g[1] for g in got], [p.score for p in expected], atol=1e-5)
    assert len(index.search(vectors[0].tolist(), 1000)) == 300
    client.close()


def test_records_come_back_right_when_the_payload_cache_is_smaller_than_a_query(tmp_path, embedder):
    path = str(tmp_path / "small-cache")
    store = PromptStore.open("m", path=path)
    texts = ["red apples", "green pears", "blue plums"]
    for i, text in enumerate(texts):
        store.add(embedder.embed_one(text), [i], _record(i))
    store.close()
    again = PromptStore.open("m", path=path)
    again.cache_size = 1  # every query must fetch payloads it no longer holds
    for i, text in enumerate(texts):
        hits = again.nearest(embedder.embed_one(text), 3)
        assert hits[0].token_ids == [i]
        np.testing.assert_array_equal(hits[0].record.prefill, _record(i).prefill)
    again.close()


def test_every_embedding_backend_computes_the_same_model(embedder):
    texts = ["The cat sat on the mat.", "Quarterly tax filing deadline, explained at length for everyone."]
    assert embedder.backend == "onnx-int8"  # onnxruntime is a dependency: the fast path is the one in use
    reference = PromptEmbedder(backend="torch").embed(texts)
    exact = (PromptEmbedder(backend="onnx").embed(texts) * reference).sum(dim=1)
    assert float(exact.min()) > 1 - 1e-5
    quantised = (embedder.embed(texts) * reference).sum(dim=1)
    assert float(quantised.min()) > 0.97


class _CountingEmbedder:
    """The real embedder, counting how often the model runs."""

    def __init__(self, embedder: PromptEmbedder) -> None:
        self.embedder, self.calls = embedder, 0

    def embed_one(self, text: str) -> list[float]:
        self.calls += 1
        return self.embedder.embed_one(text)


def test_a_request_embeds_its_prompt_once_for_its_forecast_and_its_record(tmp_path, embedder, soft_cosine, redis_url):
    counting = _CountingEmbedder(embedder)
    predictor = _predictor(tmp_path, counting, soft_cosine, redis_url, "once")
    predictor.record("seed prompt so the store is not empty", [1, 2], _record(1))
    assert counting.calls == 1  # a record with no forecast before it embeds its prompt itself
    prompt = "Explain how a hash table works"
    predictor.predict(prompt, [3, 4])
    predictor.record(prompt, [3, 4], _record(2))
    assert counting.calls == 2 and predictor.pending.reused == 1
    stored = predictor.store.nearest(embedder.embed_one(prompt), 1)[0]
    assert stored.score == pytest.approx(1.0, abs=1e-5) and stored.token_ids == [3, 4]
    predictor.predict(prompt, [3, 4])  # the same prompt again: a new request, its own embedding
    assert counting.calls == 3 and len(predictor.pending) == 1


def test_pending_embeddings_keep_only_the_newest_when_full():
    from remoe.predictor.pending_embeddings import PendingEmbeddings

    pending = PendingEmbeddings(capacity=2)
    for i, prompt in enumerate(["a", "b", "c"]):
        pending.put(prompt, [float(i)])
    assert pending.take("a") is None  # a request that never recorded does not pin memory
    assert pending.take("c") == [2.0] and pending.take("c") is None and len(pending) == 1
    with pytest.raises(ValueError, match="capacity"):
        PendingEmbeddings(capacity=0)
