"""Checkpoints that ship quantized (GPT-OSS's MXFP4 experts, DeepSeek-V3's block FP8): Remoe reads the tensors
transformers' own dequantizing load makes, bit for bit, and serves them with the same tokens and logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from remoe.checkpoint.manifest import Manifest
from remoe.checkpoint.shipped_quantization import FP4_VALUES, dequantize_block_fp8, dequantize_mxfp4
from remoe.checkpoint.weights import open_weights
from remoe.errors import CheckpointError, UnsupportedArchitectureError
from remoe.functions.experts_record import build_record
from remoe.functions.lean_weights import open_lean
from remoe.model.engine import LocalEngine
from remoe.model.split import describe, split_checkpoint
from tests.conftest import PROMPT, reference_generate, reference_logits
from tests.shipped_formats import (
    block_fp8_encode,
    make_tiny_deepseek_v3,
    write_block_fp8,
    write_mxfp4,
)


@pytest.fixture(scope="module")
def shipped(tiny_model, tmp_path_factory):
    """shipped("mxfp4" | "fp8") -> a quantized checkpoint directory in the hub's layout (made once)."""
    made = {}

    def get(method: str):
        if method not in made:
            root = tmp_path_factory.mktemp(f"shipped-{method}")
            if method == "mxfp4":
                made[method] = write_mxfp4(tiny_model("gpt_oss"), root / "gpt-oss-mxfp4")
            else:
                made[method] = write_block_fp8(make_tiny_deepseek_v3(root / "ds3"), root / "deepseek-v3-fp8")
        return made[method]

    return get


@pytest.fixture(scope="module")
def transformers_load(shipped):
    made = {}

    def get(method: str):
        if method not in made:
            made[method] = AutoModelForCausalLM.from_pretrained(shipped(method)).eval()
        return made[method]

    return get


@pytest.mark.parametrize("method", ["mxfp4", "fp8"])
def test_every_tensor_reads_as_transformers_dequantizing_load_holds_it(method, shipped, transformers_load):
    weights = open_weights(shipped(method))
    state = transformers_load(method).state_dict()
    backbone = dict(weights.backbone_tensors())
    assert backbone, "the backbone should have tensors"
    for name, tensor in backbone.items():
        assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name]), name
    for moe in weights.arch.moe_layers:
        for e in range(moe.num_experts):
            for param, tensor in weights.read_expert(moe.layer, e).items():
                assert torch.equal(tensor, state[moe.param_path(param)][e]), (moe.layer, e, param)
    # the quantized parts are gone from the index, and the bytes counted are what is held once dequantized
    assert not [k for k in weights.ckpt.keys() if k.endswith(("_blocks", "_scales", "_scale_inv"))]
    moe = weights.arch.moe_layers[0]
    held = sum(state[moe.param_path(p)][0].nbytes for p in moe.param_shapes)
    assert weights.expert_nbytes_as(moe.layer, 0, torch.float32) == held


@pytest.mark.parametrize("method", ["mxfp4", "fp8"])
def test_the_engine_generates_what_transformers_generates(method, shipped, transformers_load):
    engine = LocalEngine(shipped(method), device="cpu")
    ref = transformers_load(method)
    ids = engine.encode(PROMPT)
    assert engine.generate(token_ids=ids, max_new_tokens=24).token_ids == reference_generate(ref, ids, 24)
    torch.testing.assert_close(engine.prefill_logits(ids), reference_logits(ref, ids), rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["mxfp4", "fp8"])
def test_a_split_stores_the_dequantized_tensors_and_says_what_shipped(method, shipped, transformers_load, tmp_path):
    src = shipped(method)
    manifest = split_checkpoint(src, tmp_path / "split", progress=False)
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert "quantization_config" not in config
    assert manifest.shipped_quantization.startswith(method) and manifest.expert_format is None
    assert Manifest.load(tmp_path / "split").shipped_quantization == manifest.shipped_quantization
    weights = open_weights(tmp_path / "split")
    assert f"checkpoint shipped {manifest.shipped_quantization}" in describe(weights)
    ref = transformers_load(method)
    engine = LocalEngine(tmp_path / "split", device="cpu")
    ids = engine.encode(PROMPT)
    assert engine.generate(token_ids=ids, max_new_tokens=24).token_ids == reference_generate(ref, ids, 24)
    # a function serves the split of gated-SiLU experts (DeepSeek's; GPT-OSS's clamp theirs) without transformers;
    # the original needs the split for that
    if method == "fp8":
        lean, why = open_lean(tmp_path / "split")
        assert lean is not None, why
    record, why = build_record(open_weights(src))
    assert record is None and "shipped quantized" in why


def test_a_shipped_checkpoint_requantizes_to_int4_from_its_dequantized_experts(shipped, tmp_path):
    manifest = split_checkpoint(shipped("fp8"), tmp_path / "int4", progress=False, expert_dtype="int4", group_size=32)
    assert manifest.expert_format.dtype == "int4" and manifest.shipped_quantization.startswith("fp8")
    engine = LocalEngine(tmp_path / "int4", device="cpu")
    assert len(engine.generate(token_ids=engine.encode(PROMPT), max_new_tokens=8).token_ids) == 8


def test_mxfp4_decodes_every_code_and_exponent():
    """All 16 e2m1 codes in both nibbles, scales from 2^-127 to 2^127: the published value table times 2^(s-127)."""
    codes = torch.arange(256, dtype=torch.uint8).reshape(16, 1, 16)  # [O=16, G=1, B=16]: every byte once
    scales = torch.tensor([0, 1, 100, 126, 127, 128, 200, 254] * 2, dtype=torch.uint8).reshape(16, 1)
    out = dequantize_mxfp4(codes, scales, torch.float32)  # [32, 16]
    table = torch.tensor(FP4_VALUES, dtype=torch.float64)
    for row in range(16):
        for col in range(32):
            byte = int(codes[row, 0, col // 2])
            code = byte & 0x0F if col % 2 == 0 else byte >> 4
            want = (table[code] * 2.0 ** (int(scales[row, 0]) - 127)).float()  # 6 x 2^127 is inf in float32
            assert out[col, row].item() == want.item(), (row, col)


def test_block_fp8_edge_blocks_cover_what_is_left():
    """DeepSeek-V3's kv_a_proj_with_mqa [576, 7168] has 4.5 row blocks of 128: the fifth scale covers the last 64
    rows (DeepSeek's reference `weight_dequant` indexes scale [i // 128, j // 128])."""
    torch.manual_seed(0)
    w = torch.randn(40, 24)
    q, scale = block_fp8_encode(w, 16)
    assert scale.shape == (3, 2)
    got = dequantize_block_fp8(q, scale, (16, 16), torch.float32)
    want = torch.empty(40, 24)
    for i in range(40):
        for j in range(24):
            want[i, j] = q[i, j].float() * scale[i // 16, j // 16]
    assert torch.equal(got, want)
    assert (got - w).abs().max() <= w.abs().max() / 8  # e4m3 keeps 3 mantissa bits


def _config_with(ckpt, **quantization_config):
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (ckpt / "config.json").write_text(json.dumps(config))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_quantizations_remoe_cannot_read_are_refused_by_name(shipped, tmp_path):
    ckpt = _copy(shipped("fp8"), tmp_path / "awq")
    _config_with(ckpt, quant_method="awq", bits=4)
    with pytest.raises(UnsupportedArchitectureError, match=r"quant_method 'awq'.*mxfp4 and fp8"):
        open_weights(ckpt)
    _config_with(ckpt, quant_method="fp8", activation_scheme="static", weight_block_size=[8, 8])
    with pytest.raises(UnsupportedArchitectureError, match="static"):
        open_weights(ckpt)
    _config_with(ckpt, quant_method="fp8", activation_scheme="dynamic")
    with pytest.raises(UnsupportedArchitectureError, match="weight_block_size"):
        open_weights(ckpt)


def test_damaged_quantized_tensors_are_errors_naming_the_key(shipped, tmp_path):
    ckpt = _copy(shipped("fp8"), tmp_path / "no-scale")
    tensors = load_file(str(ckpt / "model.safetensors"))
    key = "model.layers.1.self_attn.q_a_proj.weight_scale_inv"
    tensors[key] = tensors[key][:1]  # one row of scales short
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"q_a_proj\.weight.*8x8 blocks need scales"):
        open_weights(ckpt)

    ckpt = _copy(shipped("mxfp4"), tmp_path / "no-scales")
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["model.layers.0.mlp.experts.down_proj_scales"]
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"down_proj_blocks.*has no .*down_proj_scales"):
        open_weights(ckpt)


@pytest.mark.processes
def test_remoe_up_serves_a_block_fp8_checkpoint_as_transformers_does(shipped, transformers_load):
    """Expert services and functions (which open the original checkpoint with transformers: a lean function
    reads files as stored) dequantize the experts they load: the tokens of transformers' own load."""
    from remoe.cluster import LocalCluster
    from remoe.model.tokenizer import load_tokenizer
    from remoe.sdk import Client
    from tests.conftest import warm_functions

    src = shipped("fp8")
    ids = load_tokenizer(src).encode(PROMPT)
    expected = reference_generate(transformers_load("fp8"), ids, 16)
    with LocalCluster(src, port=0, remote_ratio=0.5, predictor=False) as cluster:
        client = Client(cluster.address)
        warm_functions(client)
        result = client.generate(token_ids=ids, max_new_tokens=16)
        served = [f for f in client.status().backbone.functions if f.calls > 0]
    assert result.token_ids == expected
    assert served, "the functions should have computed batches"
