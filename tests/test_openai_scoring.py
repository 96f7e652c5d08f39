"""What evaluation harnesses ask of the HTTP API, through real processes (two expert services, half of each MoE
layer's experts in functions): echo + logprobs equal transformers' own float32 log-softmax, max_tokens 0 scores
the prompt only, batched prompts answer as one by one, n choices follow their seeds, chat and streamed logprobs,
vLLM's tokenizer endpoints, and lm-evaluation-harness run against it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import openai
import pytest
import torch

from remoe.cluster import LocalCluster
from remoe.model.tokenizer import load_tokenizer
from remoe.sdk import Client
from tests.conftest import PROMPT, reference_logits, warm_functions

pytestmark = pytest.mark.processes

ARCH = "mixtral"
TOL = 1e-4
PROMPTS = [PROMPT, "Write a short poem about the sea", "SELECT name, price FROM products"]


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    with LocalCluster(
        tiny_model(ARCH), port=0, remote_ratio=0.5, predictor=False, run_dir=tmp_path_factory.mktemp("scoring")
    ) as c:
        warm_functions(Client(c.address))
        yield c


@pytest.fixture(scope="module")
def oai(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.http_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def name(tiny_model) -> str:
    return tiny_model(ARCH).name


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model(ARCH))


def _post(cluster, path: str, body: dict) -> dict:
    reply = httpx.post(cluster.http_url.removesuffix("/v1") + path, json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_echo_logprobs_equal_transformers_and_the_sdk_score(cluster, oai, name, tokenizer, reference):
    ids = tokenizer.encode(PROMPT)
    sdk = Client(cluster.address).generate(token_ids=ids, max_new_tokens=4, logprobs=3, echo=True)
    sequence = ids + sdk.token_ids
    logp = torch.log_softmax(reference_logits(reference(ARCH), sequence), dim=-1)  # [T + 4, V]
    want = logp[torch.arange(len(sequence) - 1), torch.tensor(sequence[1:])]  # token t + 1 under row t
    lp = oai.completions.create(model=name, prompt=ids, max_tokens=4, logprobs=3, echo=True, temperature=0)
    choice = lp.choices[0]
    scores = choice.logprobs
    assert len(scores.tokens) == len(sequence)
    assert scores.token_logprobs[0] is None and scores.top_logprobs[0] is None  # nothing precedes the first token
    assert torch.allclose(torch.tensor(scores.token_logprobs[1:]), want, atol=TOL, rtol=0)
    assert choice.text == tokenizer.decode(ids) + sdk.text
    assert scores.text_offset == sorted(scores.text_offset) and scores.text_offset[0] == 0
    for top, row in zip(scores.top_logprobs[1:], logp, strict=False):
        assert len(top) <= 3 and math.isclose(max(top.values()), float(row.max()), abs_tol=TOL)
    # The SDK's numbers are the same; a score is the prompt's alone.
    sdk_scores = [p.logprob for p in sdk.prompt_logprobs + sdk.logprobs]
    assert sdk.prompt_token_ids == ids
    assert torch.allclose(torch.tensor(sdk_scores), want, atol=TOL, rtol=0)
    score = Client(cluster.address).score(token_ids=ids)
    assert score.token_ids == ids
    assert torch.allclose(torch.tensor([p.logprob for p in score.logprobs]), want[: len(ids) - 1], atol=TOL, rtol=0)
    assert math.isclose(score.total(3), float(want[2 : len(ids) - 1].sum()), abs_tol=1e-3)


def test_max_tokens_zero_with_echo_scores_the_prompt_only(cluster, oai, name, tokenizer):
    ids = tokenizer.encode(PROMPT)
    answer = oai.completions.create(model=name, prompt=PROMPT, max_tokens=0, logprobs=1, echo=True, temperature=0)
    choice = answer.choices[0]
    assert choice.text == PROMPT and len(choice.logprobs.tokens) == len(ids)
    assert answer.usage.completion_tokens == 0 and answer.usage.prompt_tokens == len(ids)
    score = Client(cluster.address).score(prompt=PROMPT)
    assert [round(p.logprob, 4) for p in score.logprobs] == [round(v, 4) for v in choice.logprobs.token_logprobs[1:]]


def test_batched_prompts_answer_as_one_by_one_in_order(oai, name, tokenizer):
    batch = [tokenizer.encode(p) for p in PROMPTS]
    together = oai.completions.create(model=name, prompt=batch, max_tokens=6, temperature=0, logprobs=0)
    assert [c.index for c in together.choices] == [0, 1, 2]
    for i, ids in enumerate(batch):
        alone = oai.completions.create(model=name, prompt=ids, max_tokens=6, temperature=0, logprobs=0).choices[0]
        assert together.choices[i].text == alone.text
        assert together.choices[i].logprobs.token_logprobs == pytest.approx(alone.logprobs.token_logprobs, abs=TOL)
    assert together.usage.prompt_tokens == sum(map(len, batch))
    texts = oai.completions.create(model=name, prompt=PROMPTS[:2], max_tokens=3, temperature=0)
    assert [c.text for c in texts.choices] == [
        oai.completions.create(model=name, prompt=p, max_tokens=3, temperature=0).choices[0].text for p in PROMPTS[:2]
    ]


def test_n_choices_follow_their_seeds(oai, name):
    """Choice j of a request seeded s draws as a single request seeded s + j."""
    answer = oai.completions.create(model=name, prompt=PROMPT, max_tokens=8, temperature=1.0, n=3, seed=7)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    for j, choice in enumerate(answer.choices):
        alone = oai.completions.create(model=name, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7 + j)
        assert choice.text == alone.choices[0].text
    assert len({c.text for c in answer.choices}) > 1, "different seeds should draw different samples"


def test_chat_and_streamed_logprobs_equal_the_sdk(cluster, oai, name, tokenizer):
    messages = [{"role": "user", "content": "Explain a hash table."}]
    chat = oai.chat.completions.create(
        model=name, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    ids = _post(cluster, "/tokenize", {"messages": messages})["tokens"]
    sdk = Client(cluster.address).generate(token_ids=ids, max_new_tokens=5, logprobs=2)
    assert [round(c.logprob, 4) for c in content] == [round(p.logprob, 4) for p in sdk.logprobs]
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)
    whole = oai.completions.create(model=name, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    events = oai.completions.create(model=name, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2, stream=True)
    streamed = [v for e in events for v in (e.choices[0].logprobs.token_logprobs if e.choices[0].logprobs else [])]
    assert streamed == pytest.approx(whole.choices[0].logprobs.token_logprobs, abs=TOL)


def test_tokenizer_endpoints_round_trip_with_the_model(cluster, name, tokenizer):
    tokens = _post(cluster, "/tokenize", {"model": name, "prompt": PROMPT})
    assert tokens["tokens"] == tokenizer.encode(PROMPT) and tokens["count"] == len(tokens["tokens"])
    assert tokens["max_model_len"] > 0
    assert _post(cluster, "/detokenize", {"tokens": tokens["tokens"]})["prompt"] == tokenizer.decode(tokens["tokens"])
    info = httpx.get(cluster.http_url.removesuffix("/v1") + "/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == tokenizer.eos_token and info["vocab_size"] > 0
    json.dumps(info)  # plain JSON


TASKS = Path(__file__).parent / "lm_eval_tasks"

MULTIPLE_CHOICE = """task: remoe_multiple_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GENERATE_UNTIL = """task: remoe_generate_until
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _continuation_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """How lm-eval splits a (context, continuation) pair into tokens: trailing spaces of the context move to the
    continuation; the continuation's tokens are the whole's after the context's (no special tokens)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return whole[: len(ctx)], whole[len(ctx) :]


def _reference_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    ctx, cont = _continuation_ids(tokenizer, context, continuation)
    sequence = ctx + cont
    logp = torch.log_softmax(reference_logits(model, sequence), dim=-1)  # [T, V]
    rows = torch.arange(len(ctx) - 1, len(sequence) - 1)
    return float(logp[rows, torch.tensor(cont)].sum())


def test_lm_eval_runs_a_multiple_choice_and_a_generate_until_task_with_transformers_own_scores(
    cluster, tiny_model, reference, tmp_path, monkeypatch
):
    """lm-evaluation-harness's `local-completions` model, offline: a multiple-choice task (every choice's
    log-likelihood through echo + logprobs) and a `generate_until` task run to the end. Each choice's
    log-likelihood equals the sum of transformers' own float32 log-softmax over the same continuation tokens
    (1e-4), and the accuracy is the one those reference log-likelihoods give."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(MULTIPLE_CHOICE.format(data=TASKS / "multiple_choice.jsonl"))
    (tasks / "gen.yaml").write_text(GENERATE_UNTIL.format(data=TASKS / "generate_until.jsonl"))
    path = tiny_model(ARCH)
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": path.name,
            "base_url": f"{cluster.http_url}/completions",
            "num_concurrent": 2,
            "max_retries": 1,
            "tokenized_requests": True,
        },
        tasks=["remoe_multiple_choice", "remoe_generate_until"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
        batch_size=1,
    )
    sdk = Client(cluster.address)
    tokenizer = load_tokenizer(path)
    generated = {s["doc"]["prompt"]: s["resps"][0][0] for s in out["samples"]["remoe_generate_until"]}
    for prompt, text in generated.items():  # greedy, 6 tokens, up to a newline: what the SDK makes
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        assert text == sdk.generate(token_ids=ids, max_new_tokens=6, stop=["\n"]).text, prompt
    assert len(generated) == 3
    model = reference(ARCH)
    samples = out["samples"]["remoe_multiple_choice"]
    assert len(samples) == 6
    correct = 0
    for sample in samples:
        pairs = [_pair(arg) for arg in sample["arguments"]]
        got = [float(r[0][0]) for r in sample["resps"]]
        want = [_reference_loglikelihood(model, tokenizer, c, x) for c, x in pairs]
        assert got == pytest.approx(want, abs=TOL), sample["doc"]
        correct += int(max(range(len(want)), key=want.__getitem__) == sample["doc"]["answer"])
    accuracy = out["results"]["remoe_multiple_choice"]["acc,none"]
    assert accuracy == pytest.approx(correct / len(samples))
    json.dumps(out["results"])  # the harness's own results table holds plain numbers


def _pair(argument) -> tuple[str, str]:
    """A sample's (context, continuation), however lm-eval's version logs it."""
    if isinstance(argument, dict):
        values = list(argument.values())
        return values[0], values[1]
    return argument[0], argument[1]
