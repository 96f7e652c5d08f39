"""Broken or unsupported checkpoints fail with an error that names the file, architecture or key."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from remoe.checkpoint.weights import open_weights
from remoe.errors import CheckpointError, MissingWeightError, UnsupportedArchitectureError
from remoe.model.engine import LocalEngine
from tests.conftest import PROMPT, reference_generate


def _copy(tiny_model, tmp_path, arch="mixtral", layout="per-expert"):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_model(arch, layout), dst)
    return dst


def _rewrite(path, drop: str):
    tensors = load_file(str(path))
    del tensors[drop]
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        open_weights(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json not found"):
        open_weights(tmp_path)


def test_no_safetensors_files(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors files"):
        open_weights(ckpt)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:7], id="shorter-than-header"),
        pytest.param(lambda b: b[:8] + b"{garbage" + b[16:], id="garbage-header"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-data"),
        pytest.param(lambda b: (10**12).to_bytes(8, "little") + b[8:], id="absurd-header-length"),
    ],
)
def test_corrupt_safetensors_names_the_file(tiny_model, tmp_path, damage):
    ckpt = _copy(tiny_model, tmp_path)
    path = ckpt / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        open_weights(ckpt)


def test_missing_backbone_key_is_named(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path)
    _rewrite(ckpt / "model.safetensors", "model.layers.1.self_attn.q_proj.weight")
    with pytest.raises(MissingWeightError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight"):
        open_weights(ckpt)


def test_missing_per_expert_key_is_named(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path)
    _rewrite(ckpt / "model.safetensors", "model.layers.2.block_sparse_moe.experts.5.w3.weight")
    with pytest.raises(MissingWeightError, match=r"model\.layers\.2\.block_sparse_moe\.experts\.5\.w3\.weight"):
        open_weights(ckpt)


def test_missing_fused_expert_tensor_is_named(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path, layout="fused")
    _rewrite(ckpt / "model.safetensors", "model.layers.0.mlp.experts.down_proj")
    with pytest.raises(MissingWeightError, match=r"model\.layers\.0\.mlp\.experts\.down_proj"):
        open_weights(ckpt)


def test_dense_architecture_is_unsupported_by_name(tmp_path):
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match=r"llama.*experts interface"):
        open_weights(tmp_path)


def test_unknown_model_type_is_named(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "not_a_real_moe"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json"):
        open_weights(ckpt)


def test_a_quantization_config_over_unquantized_tensors_is_refused(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path, arch="gpt_oss")
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="declares quant_method 'mxfp4' but no tensor is stored so"):
        open_weights(ckpt)


def test_sharded_checkpoint_with_index_matches(tiny_model, reference, tmp_path):
    ref = reference("qwen2_moe")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    shutil.copy(tiny_model("qwen2_moe") / "tokenizer.json", tmp_path / "sharded")
    shutil.copy(tiny_model("qwen2_moe") / "tokenizer_config.json", tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    engine = LocalEngine(tmp_path / "sharded", device="cpu")
    ids = engine.encode(PROMPT)
    assert engine.generate(token_ids=ids, max_new_tokens=8).token_ids == reference_generate(ref, ids, 8)


def test_index_naming_a_missing_shard(tiny_model, reference, tmp_path):
    ckpt = tmp_path / "sharded"
    reference("mixtral").save_pretrained(ckpt, max_shard_size="200KB")
    shard = sorted(ckpt.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        open_weights(ckpt)


def test_wrong_shape_in_checkpoint_is_named(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight has shape \(3,\)"):
        LocalEngine(ckpt, device="cpu")


def test_wrong_expert_shape_is_named_when_the_expert_loads(tiny_model, tmp_path):
    ckpt = _copy(tiny_model, tmp_path)
    key = "model.layers.0.block_sparse_moe.experts.1.w2.weight"
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    engine = LocalEngine(ckpt, device="cpu")
    with pytest.raises(CheckpointError, match=r"layer 0 expert 1 down_proj has shape"):
        engine.executor.compute(0, torch.zeros(1, 64), torch.tensor([[1, 2]]), torch.ones(1, 2))
