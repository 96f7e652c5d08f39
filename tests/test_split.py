"""`remoe split`: exact sizes, reload to the same logits, and a backbone that holds no routed expert."""

from __future__ import annotations

import pytest
import torch

from remoe.checkpoint.files import read_safetensors_header
from remoe.checkpoint.manifest import Manifest
from remoe.checkpoint.weights import SplitWeights, split_expert_key
from remoe.errors import CheckpointError
from remoe.model.engine import LocalEngine
from remoe.model.generation import forward_logits, new_cache
from remoe.model.split import split_checkpoint
from tests.conftest import ARCHS, PROMPT, reference_generate, reference_logits


@pytest.fixture(scope="module")
def split_dir(tiny_model, tmp_path_factory):
    made = {}

    def get(arch: str, layout: str = "per-expert"):
        if (arch, layout) not in made:
            out = tmp_path_factory.mktemp(f"split-{arch}-{layout}") / "split"
            split_checkpoint(tiny_model(arch, layout), out, progress=False)
            made[(arch, layout)] = out
        return made[(arch, layout)]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_split_reloads_to_the_same_logits_and_tokens(arch, split_dir, reference):
    engine = LocalEngine(split_dir(arch), device="cpu")
    ids = engine.encode(PROMPT)
    torch.testing.assert_close(engine.prefill_logits(ids), reference_logits(reference(arch), ids), rtol=0, atol=1e-4)
    assert engine.generate(token_ids=ids, max_new_tokens=16).token_ids == reference_generate(reference(arch), ids, 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_byte_sizes_match_the_files(arch, split_dir):
    out = split_dir(arch, "fused")
    manifest = Manifest.load(out)

    backbone_header = read_safetensors_header(out / manifest.backbone_file)
    backbone_data = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in backbone_header.items() if k[0] != "_")
    assert manifest.backbone_bytes == backbone_data
    for entry in manifest.layers:
        path = out / entry.file
        header = read_safetensors_header(path)
        for expert, nbytes in enumerate(entry.expert_bytes):
            keys = [k for k in header if k.startswith(split_expert_key(entry.layer, expert, ""))]
            assert keys, f"no tensors for expert {expert} in {path}"
            assert nbytes == sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in keys)
        header_len = int.from_bytes(path.read_bytes()[:8], "little")
        assert path.stat().st_size == 8 + header_len + sum(entry.expert_bytes)


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_holds_exactly_the_manifest_bytes_and_no_routed_expert(arch, split_dir):
    out = split_dir(arch)
    engine = LocalEngine(out, device="cpu")
    manifest = Manifest.load(out)

    assert engine.backbone.param_bytes() == manifest.backbone_bytes
    expert_params = engine.backbone.arch.expert_param_paths()
    for name, param in engine.model.named_parameters():
        assert (param.device.type == "meta") == (name in expert_params), name
    assert manifest.moe_layers == engine.backbone.arch.layer_indices
    assert manifest.top_k == engine.backbone.arch.top_k


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_kv_bytes_per_token_matches_the_cache_transformers_fills(arch, split_dir):
    out = split_dir(arch)
    engine = LocalEngine(out, device="cpu")
    manifest = Manifest.load(out)
    ids = engine.encode(PROMPT)[:8]  # shorter than GPT-OSS's sliding window, so every layer grows per token

    def cache_bytes(n: int) -> int:
        cache = new_cache(engine.model)
        with torch.inference_mode():
            forward_logits(engine.model, engine.device, ids[:n], cache)
        return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))

    assert cache_bytes(8) - cache_bytes(4) == 4 * manifest.kv_cache_bytes_per_token


def test_split_directory_reads_only_requested_expert_tensors(split_dir):
    weights = SplitWeights.open(split_dir("mixtral"))
    layer = weights.arch.layer_indices[1]
    tensors = weights.read_expert(layer, 5)
    assert set(tensors) == set(weights.arch.moe_layer(layer).param_shapes)
    assert sum(t.nbytes for t in tensors.values()) == weights.expert_nbytes(layer, 5)


def test_split_refuses_a_non_empty_output_and_leaves_nothing_half_written(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(CheckpointError, match="not an empty directory"):
        split_checkpoint(tiny_model("mixtral"), out, progress=False)
    assert (out / "keep.txt").read_text() == "user data"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model("mixtral") / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError):
        split_checkpoint(broken, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out2.partial").exists()


def test_tied_embeddings_load_once_and_match(tmp_path):
    from transformers import AutoModelForCausalLM

    from remoe.model.tiny import TinySpec, make_tiny_model

    ckpt = make_tiny_model(TinySpec("qwen3_moe", layers=2, tie_embeddings=True), tmp_path / "tied")
    out = tmp_path / "tied-split"
    manifest = split_checkpoint(ckpt, out, progress=False)
    engine = LocalEngine(out, device="cpu")
    ref = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()

    assert engine.model.lm_head.weight.data_ptr() == engine.model.model.embed_tokens.weight.data_ptr()
    assert engine.backbone.param_bytes() == manifest.backbone_bytes
    ids = engine.encode(PROMPT)
    assert engine.generate(token_ids=ids, max_new_tokens=12).token_ids == reference_generate(ref, ids, 12)
