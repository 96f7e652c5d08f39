"""Malformed input to every service's public RPCs and to the CLI, table by table: each gets the right status (or
exit code) and a message naming what is wrong, and the services keep serving afterwards. (The gateway's own
table is in test_cluster.py, the scheduler's in test_scheduler_service.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from remoe.cluster import LocalCluster
from remoe.proto import (
    backbone_pb2,
    backbone_pb2_grpc,
    common_pb2,
    expert_pb2,
    expert_pb2_grpc,
    predictor_pb2,
    predictor_pb2_grpc,
    tensor_pb2,
)
from remoe.sdk import Client
from remoe.transport import tensor_codec
from tests.conftest import PROMPT, reference_generate

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

ARCH = "qwen3_moe"  # 3 MoE layers x 8 experts, top-2, hidden 64
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bad-input")
    with LocalCluster(tiny_model(ARCH), port=0, expert_services=1, run_dir=run_dir) as c:
        yield c


# -- backbone.Generate: (request fields, status, message)
def _fn(name="f", layers=(0,), experts=(1,), memory_mb=1024) -> backbone_pb2.PlanFunction:
    return backbone_pb2.PlanFunction(name=name, layers=list(layers), experts=list(experts), memory_mb=memory_mb)


SAMPLING = common_pb2.SamplingParams(max_new_tokens=2)
BACKBONE = {
    "no-tokens": ({"token_ids": []}, CODE.INVALID_ARGUMENT, "token_ids is empty"),
    "token-outside-vocab": ({"token_ids": [5, 10**6]}, CODE.INVALID_ARGUMENT, "outside [0,"),
    "negative-token": ({"token_ids": [-3]}, CODE.INVALID_ARGUMENT, "outside [0,"),
    "zero-new-tokens": ({"sampling": common_pb2.SamplingParams()}, CODE.INVALID_ARGUMENT, "max_new_tokens"),
    "nan-temperature": (
        {"sampling": common_pb2.SamplingParams(max_new_tokens=2, temperature=float("nan"))},
        CODE.INVALID_ARGUMENT,
        "temperature",
    ),
    "plan-layers-vs-experts": ({"functions": [_fn(layers=(0, 1))]}, CODE.INVALID_ARGUMENT, "2 layers for 1 experts"),
    "plan-expert-not-in-model": ({"functions": [_fn(experts=(99,))]}, CODE.INVALID_ARGUMENT, "not in the model"),
    "plan-bad-name": ({"functions": [_fn(name="Bad_Name")]}, CODE.INVALID_ARGUMENT, "DNS label"),
    "plan-expert-twice": ({"functions": [_fn("a"), _fn("b")]}, CODE.INVALID_ARGUMENT, "in both"),
    "plan-tiny-memory": ({"functions": [_fn(memory_mb=10)]}, CODE.INVALID_ARGUMENT, "below 128"),
}


@pytest.mark.parametrize("fields, code, message", list(BACKBONE.values()), ids=list(BACKBONE))
def test_backbone_generate(cluster, fields, code, message):
    stub = backbone_pb2_grpc.BackboneServiceStub(grpc.insecure_channel(cluster.by_name("backbone").address))
    request = backbone_pb2.BackboneGenerateRequest(**{"token_ids": [5, 6], "sampling": SAMPLING, **fields})
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request, timeout=30))
    assert (err.value.code(), message in err.value.details()) == (code, True), err.value.details()


def test_backbone_warm_of_an_unknown_function_is_not_found(cluster):
    stub = backbone_pb2_grpc.BackboneServiceStub(grpc.insecure_channel(cluster.by_name("backbone").address))
    with pytest.raises(grpc.RpcError) as err:
        stub.Warm(backbone_pb2.WarmRequest(functions=["nope"]), timeout=30)
    assert err.value.code() == CODE.NOT_FOUND and "nope" in err.value.details()


# -- expert service Compute: one bad batch gets an error result on the stream, which stays open
def _tensor(t: torch.Tensor) -> tensor_pb2.Tensor:
    return tensor_codec.encode(t)


def _batch(**fields) -> expert_pb2.ExpertBatch:
    base = {
        "seq": 1,
        "layer": 0,
        "hidden_states": _tensor(torch.zeros(2, 64)),
        "top_k_index": _tensor(torch.tensor([[0, 1], [2, 3]])),
        "top_k_weights": _tensor(torch.ones(2, 2)),
    }
    return expert_pb2.ExpertBatch(**{**base, **fields})


EXPERT = {
    "layer-without-experts": (_batch(layer=99), "layer 99 has no routed experts"),
    "hidden-size": (_batch(hidden_states=_tensor(torch.zeros(2, 65))), "hidden size 65 != 64"),
    "rows-disagree": (_batch(top_k_index=_tensor(torch.tensor([[0, 1]]))), "inconsistent shapes"),
    "expert-id-out-of-range": (_batch(top_k_index=_tensor(torch.tensor([[0, 8], [1, 2]]))), "expert ids outside"),
    "wrong-dtype": (_batch(top_k_index=_tensor(torch.zeros(2, 2))), "top_k_index"),
    "bytes-disagree-with-shape": (
        _batch(hidden_states=tensor_pb2.Tensor(dtype="float32", shape=[2, 64], data=b"\0" * 12)),
        "hidden_states",
    ),
    "huge-claimed-shape": (
        _batch(hidden_states=tensor_pb2.Tensor(dtype="float32", shape=[2**40, 64], data=b"")),
        "hidden_states",
    ),
    "unknown-dtype": (_batch(hidden_states=tensor_pb2.Tensor(dtype="complex512", shape=[2, 64])), "hidden_states"),
}


@pytest.mark.parametrize("batch, message", list(EXPERT.values()), ids=list(EXPERT))
def test_expert_compute(cluster, batch, message):
    stub = expert_pb2_grpc.ExpertServiceStub(grpc.insecure_channel(cluster.by_name("expert-0").address))
    good = _batch(seq=2)
    bad_result, good_result = list(stub.Compute(iter([batch, good]), timeout=30))
    assert bad_result.status_code == CODE.INVALID_ARGUMENT.value[0] and message in bad_result.error, bad_result.error
    assert good_result.status_code == 0, "the stream keeps serving after a bad batch"


def test_expert_load_of_an_expert_that_does_not_exist(cluster):
    stub = expert_pb2_grpc.ExpertServiceStub(grpc.insecure_channel(cluster.by_name("expert-0").address))
    with pytest.raises(grpc.RpcError) as err:
        stub.Load(expert_pb2.LoadRequest(experts=[expert_pb2.ExpertRef(layer=0, expert=99)]), timeout=30)
    assert err.value.code() == CODE.FAILED_PRECONDITION and "expert 99" in err.value.details()


# -- predictor
def _activations(**fields) -> common_pb2.ActivationSummary:
    base = {"moe_layers": [0, 1, 2], "num_experts": 8, "top_k": 2, "prefill": [1] * 24}
    return common_pb2.ActivationSummary(**{**base, **fields})


PREDICTOR = {
    "predict-empty-prompt": ("Predict", predictor_pb2.PredictRequest(prompt=""), "the prompt is empty"),
    "predict-huge-prompt": ("Predict", predictor_pb2.PredictRequest(prompt="x" * 4_000_001), "characters"),
    "record-other-model": (
        "Record",
        predictor_pb2.RecordRequest(prompt="p", activations=_activations(num_experts=64, prefill=[1] * 192)),
        "this model has",
    ),
    "record-short-counts": (
        "Record",
        predictor_pb2.RecordRequest(prompt="p", activations=_activations(prefill=[1] * 5)),
        "not 3 x 8",
    ),
    "record-negative-counts": (
        "Record",
        predictor_pb2.RecordRequest(prompt="p", activations=_activations(prefill=[-1] * 24)),
        "negative",
    ),
}


@pytest.mark.parametrize("method, request_, message", list(PREDICTOR.values()), ids=list(PREDICTOR))
def test_predictor(cluster, method, request_, message):
    stub = predictor_pb2_grpc.PredictorServiceStub(grpc.insecure_channel(cluster.by_name("predictor").address))
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request_, timeout=30)
    assert err.value.code() == CODE.INVALID_ARGUMENT and message in err.value.details(), err.value.details()


def test_after_all_of_it_the_cluster_serves_exact_tokens(cluster, tiny_model, reference):
    ids = [5, 6, 7, 8]
    assert Client(cluster.address).generate(token_ids=ids, max_new_tokens=8).token_ids == reference_generate(
        reference(ARCH), ids, 8
    )
    assert all(s.process.poll() is None for s in cluster.services), "no service died"


# -- the CLI: a non-zero exit and a message on stderr, never a traceback
def _cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remoe.cli", *argv], capture_output=True, text=True, timeout=timeout)


def _files(tmp: Path) -> Path:
    (tmp / "not-json.json").write_text("{nope")
    (tmp / "bad-plan.json").write_text(json.dumps({"functions": [{"name": "x"}]}))
    (tmp / "empty").mkdir(exist_ok=True)
    return tmp


# name -> (argv from (files dir, model dir), what the message says)
CLI = {
    "unknown-command": (lambda t, m: ["frobnicate"], "invalid choice"),
    "generate-bad-max-tokens": (lambda t, m: ["generate", "hi", "--model", m, "--max-new-tokens", "zero"], "invalid"),
    "generate-unreachable": (
        lambda t, m: ["generate", "hi", "--address", "127.0.0.1:9", "--timeout", "3"],
        "UNAVAILABLE",
    ),
    "status-unreachable": (lambda t, m: ["status", "--address", "127.0.0.1:9", "--timeout", "3"], "UNAVAILABLE"),
    "up-missing-model": (lambda t, m: ["up", "--model", f"{t}/missing"], "no such directory"),
    "up-not-a-model": (lambda t, m: ["up", "--model", f"{t}/empty"], "no config.json"),
    "up-plan-not-json": (lambda t, m: ["up", "--model", m, "--plan", f"{t}/not-json.json"], "not JSON"),
    "up-bad-plan": (lambda t, m: ["up", "--model", m, "--plan", f"{t}/bad-plan.json"], "malformed"),
    "up-bad-ratio": (lambda t, m: ["up", "--model", m, "--remote-ratio", "2"], "--remote-ratio must be in [0, 1]"),
    "up-negative-slo": (lambda t, m: ["up", "--model", m, "--slo-tpot", "-1"], "--slo-tpot must be a positive"),
    "plan-unknown-shape": (lambda t, m: ["plan", "--shape", "gpt-17", "--n-in", "8"], "invalid choice: 'gpt-17'"),
    "plan-negative-slo": (lambda t, m: ["plan", "--model", m, "--n-in", "8", "--slo-ttft", "-5"], "--slo-ttft must"),
}


@pytest.mark.parametrize("case", list(CLI))
def test_cli(case, tmp_path, tiny_model):
    argv, message = CLI[case]
    run = _cli(*argv(str(_files(tmp_path)), str(tiny_model(ARCH))))
    assert run.returncode != 0
    assert message.lower() in (run.stderr + run.stdout).lower(), run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def test_cli_generate_through_the_cluster_after_bad_calls(cluster, tiny_model, reference):
    from remoe.model.tokenizer import load_tokenizer

    run = _cli("generate", PROMPT, "--address", cluster.address, "--max-new-tokens", "4", "--json")
    assert run.returncode == 0, run.stderr
    ids = load_tokenizer(tiny_model(ARCH)).encode(PROMPT)
    assert json.loads(run.stdout)["token_ids"] == reference_generate(reference(ARCH), ids, 4)
