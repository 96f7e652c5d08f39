"""Quantized experts (`remoe split --expert-dtype`): what is stored, and that the kernels compute the stored
weights' math. T = tokens, K = top-k, H = hidden size.

Tolerances, as stated in docs/results/quantization.md:
- the float packings (and weights widened at load) compute the dequantized weights in float32: within 1e-5 of a
  float64 reference, relative to the output's largest value;
- the VNNI packings quantize the activations to int8 in groups of 32 first (as llama.cpp's Q8_0): within 1e-3 of
  a float64 reference that quantizes them the same way (an activation within float rounding of a level boundary
  may round to the other level), and within 3e-2 of the float reference;
- torch's weight-only kernels (bf16 experts without the native kernel) compute in bf16 with the scales rounded
  to bf16: within 3e-2 of a float64 reference on the same bf16 inputs (1.4e-2 at most when this was written).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from remoe.checkpoint.manifest import Manifest
from remoe.checkpoint.quantized import INT4, INT8, QuantizedWeight, quantize
from remoe.checkpoint.weights import open_weights
from remoe.errors import CheckpointError
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.kernels import native
from remoe.functions.lean_weights import open_lean
from remoe.model.engine import LocalEngine
from remoe.model.split import BACKBONE_FILE, split_checkpoint
from tests.conftest import PROMPT

needs_native = pytest.mark.skipif(native.load() is None, reason=f"native kernel: {native.unavailable_reason()}")
FLOAT_TOLERANCE = 1e-5
SAME_MATH_TOLERANCE = 1e-3
VNNI_TOLERANCE = 3e-2
BF16_TOLERANCE = 3e-2


@pytest.fixture(scope="module")
def quantized_split(tiny_model, tmp_path_factory):
    """quantized_split(arch, expert_dtype, group_size=128) -> split directory (made once per module)."""
    made = {}

    def get(arch: str, expert_dtype: str, group_size: int = 128):
        key = (arch, expert_dtype, group_size)
        if key not in made:
            out = tmp_path_factory.mktemp(f"q-{arch}-{expert_dtype}-{group_size}") / "split"
            split_checkpoint(tiny_model(arch), out, progress=False, expert_dtype=expert_dtype, group_size=group_size)
            made[key] = out
        return made[key]

    return get


def _routing(arch, tokens: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, arch.hidden_size, generator=g)  # [T, H]
    index = torch.stack([torch.randperm(arch.num_experts, generator=g)[: arch.top_k] for _ in range(tokens)])
    index[0, -1] = -1  # a slot another destination serves
    return hidden, index, torch.rand(tokens, arch.top_k, generator=g)


def _int8_activations(x: torch.Tensor) -> torch.Tensor:
    """x [T, K] as the VNNI kernels see it: int8 per group of 32 columns, scale max |x| / 127, dequantized."""
    t, k = x.shape
    groups = x.double().reshape(t, k // 32, 32)
    amax = groups.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(groups * inv).clamp(-127, 127) * (amax / 127)).reshape(t, k)


def _reference(weights, layer, hidden, index, routing, quantize_activations: bool) -> torch.Tensor:
    """The layer's weighted expert sum over the stored weights dequantized, in float64."""
    act = _int8_activations if quantize_activations else (lambda x: x.double())
    out = torch.zeros(hidden.shape, dtype=torch.float64)
    for t in range(hidden.shape[0]):
        for s in range(index.shape[1]):
            e = int(index[t, s])
            if e < 0:
                continue
            stored = weights.read_expert(layer, e)
            gate_up, down = (w.dequantize().double() for w in (stored["gate_up_proj"], stored["down_proj"]))
            gate, up = F.linear(act(hidden[t : t + 1]), gate_up).chunk(2, dim=-1)
            out[t] += F.linear(act((F.silu(gate) * up).float()), down)[0] * float(routing[t, s])
    return out


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


def test_int8_and_int4_round_to_the_nearest_level_of_their_scales():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 96, generator=g)
    q8 = quantize(w, INT8)
    step8 = q8.scale[:, None]  # [N, 1]
    assert q8.qweight.dtype == torch.int8 and q8.shape == (40, 96)
    assert bool(((q8.dequantize() - w).abs() <= step8 / 2 + 1e-7).all())
    q4 = quantize(w, INT4, group_size=32)
    assert q4.qweight.shape == (40, 48) and q4.scale.shape == (40, 3) and q4.group == 32
    levels = q4.levels()  # [N, K]: column 2c is the low nibble of byte c
    assert torch.equal(levels[:, 0::2], (q4.qweight & 15).float()) and torch.equal(
        levels[:, 1::2], (q4.qweight >> 4).float()
    )
    step4 = q4.scale.float().repeat_interleave(32, dim=1)
    assert bool(((q4.dequantize() - w).abs() <= step4 / 2 + 1e-6).all())
    assert float((q4.dequantize() - w).abs().max()) > float((q8.dequantize() - w).abs().max())  # int4 is coarser


@pytest.mark.parametrize("expert_dtype", ["int8", "int4", "bf16"])
def test_a_reduced_split_stores_the_experts_as_asked_and_leaves_the_backbone_alone(
    expert_dtype, quantized_split, tiny_model, tmp_path
):
    split = quantized_split("qwen3_moe", expert_dtype)
    manifest = Manifest.load(split)
    fmt = manifest.expert_format
    assert fmt is not None and fmt.source_dtype == "float32" and "not exact" in fmt.label()
    exact = tmp_path / "exact"
    split_checkpoint(tiny_model("qwen3_moe"), exact, progress=False)
    assert (split / BACKBONE_FILE).read_bytes() == (exact / BACKBONE_FILE).read_bytes()
    for entry in manifest.layers:
        with safe_open(split / entry.file, "pt") as f:
            stored = {k: f.get_tensor(k) for k in f.keys()}
        for e, nbytes in enumerate(entry.expert_bytes):  # the manifest's bytes are the stored tensors' own
            prefix = f"layers.{entry.layer}.experts.{e}."
            assert nbytes == sum(t.nbytes for k, t in stored.items() if k.startswith(prefix))
    full = sum(sum(entry.expert_bytes) for entry in Manifest.load(exact).layers)
    ratio = {"bf16": 2, "int8": 4, "int4": 4}[expert_dtype]  # int8: 1 byte + a scale a row; int4: 0.5 + scales
    assert manifest.experts_bytes < full / ratio * 1.3
    weights = open_weights(split)
    assert weights.expert_nbytes_as(0, 0, torch.float32) == manifest.layers[0].expert_bytes[0]  # held as stored


def test_same_and_a_bf16_split_of_a_bf16_checkpoint_stay_exact(tiny_model, tmp_path):
    assert Manifest.load(_split(tiny_model("mixtral"), tmp_path / "same", "same")).expert_format is None
    ckpt = tmp_path / "bf16-ckpt"
    shutil.copytree(tiny_model("mixtral"), ckpt)
    for path in ckpt.glob("*.safetensors"):
        save_file({k: v.bfloat16() for k, v in load_file(path).items()}, str(path), metadata={"format": "pt"})
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    assert Manifest.load(_split(ckpt, tmp_path / "bf16", "bf16")).expert_format is None


def _split(src, out, expert_dtype, group_size=128):
    split_checkpoint(src, out, progress=False, expert_dtype=expert_dtype, group_size=group_size)
    return out


@needs_native
@pytest.mark.parametrize(("expert_dtype", "group_size"), [("int8", 128), ("int4", 128), ("int4", 16)])
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v2"])
def test_the_native_kernel_computes_the_stored_weights(arch, expert_dtype, group_size, quantized_split):
    weights = open_weights(quantized_split(arch, expert_dtype, group_size))
    executor = LocalExpertExecutor(weights)
    layer = weights.arch.moe_layers[0].layer
    assert executor.kernels[layer].name == "native" and "packed as stored" in executor.kernel_reasons[layer]
    h = weights.arch.hidden_size
    vnni = executor.cache.get((layer, 0)).gate_up.vnni
    assert vnni == native.vnni_fits(h, None if expert_dtype == "int8" else min(group_size, h))
    for tokens in (1, 5, 11):  # below, at and past the kernel's 4 rows a pass
        hidden, index, routing = _routing(weights.arch, tokens, seed=tokens)
        got = executor.compute(layer, hidden, index, routing)
        float_ref = _reference(weights, layer, hidden, index, routing, quantize_activations=False)
        if vnni:
            same_math = _reference(weights, layer, hidden, index, routing, quantize_activations=True)
            assert _relative(got, same_math) < SAME_MATH_TOLERANCE
            assert _relative(got, float_ref) < VNNI_TOLERANCE
        else:
            assert _relative(got, float_ref) < FLOAT_TOLERANCE


@needs_native
@pytest.mark.parametrize("expert_dtype", ["int8", "int4"])
def test_the_float_packing_computes_what_the_vnni_packing_approximates(expert_dtype):
    """Both packings of one matrix, one call each: the float one within float rounding of the dequantized weights,
    the VNNI one within its activation quantization of it."""
    if not native.vnni_fits(64):
        pytest.skip("no AVX512-VNNI here")
    from torch import nn

    from remoe.experts.kernels.backends import GatedWeights, NativeKernel
    from remoe.experts.kernels.family import GatedFamily

    g = torch.Generator().manual_seed(3)
    h, i = 64, 96
    gate_up = quantize(torch.randn(2 * i, h, generator=g) / 8, expert_dtype, 32)
    down = quantize(torch.randn(h, i, generator=g) / 8, expert_dtype, 32)
    kernel = NativeKernel(GatedFamily(h, i, nn.SiLU(), True), torch.float32, expert_dtype)

    def pack(w: QuantizedWeight, vnni: bool):
        if w.dtype == INT8:
            return native.pack_int8(w.qweight, w.scale, vnni)
        return native.pack_int4(w.qweight, w.scale, w.min, vnni)

    x = torch.randn(6, h, generator=g)
    index, routing = torch.zeros(6, 1, dtype=torch.long), torch.ones(6, 1)
    gu, dn = gate_up.dequantize().double(), down.dequantize().double()
    gate, up = F.linear(x.double(), gu).chunk(2, dim=-1)
    want = F.linear(F.silu(gate) * up, dn)
    for vnni, tolerance in ((False, FLOAT_TOLERANCE), (True, VNNI_TOLERANCE)):
        experts = {0: GatedWeights(pack(gate_up, vnni), pack(down, vnni))}
        assert experts[0].gate_up.vnni == vnni
        assert _relative(kernel.compute(experts, x, index, routing), want) < tolerance


@needs_native
def test_the_quantized_kernels_vectorised_silu_is_within_float_rounding_of_silu():
    """The quantized kernels' SiLU (a polynomial exp, 16 lanes) against float64 silu over the float range that
    matters, its edges and a length that leaves a scalar tail; the exact path's expf the same way."""
    g = torch.cat([torch.linspace(-90, 90, 200_003), torch.tensor([0.0, -0.0, 1e-30, -1e-30, -150.0, 150.0])])
    up = torch.randn(g.numel(), generator=torch.Generator().manual_seed(5))
    want = F.silu(g.double()) * up.double()
    for fast in (True, False):
        got = native.silu_mul(g, up, fast).double()
        assert torch.isfinite(got).all()
        error = (got - want).abs() / want.abs().clamp_min(1e-30)
        assert float(error[want.abs() > 1e-30].max()) < 1e-6, f"fast={fast}"
        assert float((got - want).abs().max()) < 1e-30 + 1e-6 * float(want.abs().max())


@needs_native
@pytest.mark.parametrize("expert_dtype", ["int8", "int4"])
def test_an_odd_number_of_row_blocks_and_mixed_packings_compute_alike(expert_dtype):
    """gate_up [48, 64] takes the VNNI packing with a padding block (3 blocks of 16 rows); down [64, 24] cannot
    (24 columns) and takes the float one; one expert, both packings."""
    from torch import nn

    from remoe.experts.kernels.backends import NativeKernel
    from remoe.experts.kernels.family import GatedFamily

    g = torch.Generator().manual_seed(4)
    h, i = 64, 24
    kernel = NativeKernel(GatedFamily(h, i, nn.SiLU(), True), torch.float32, expert_dtype)
    gate_up = quantize(torch.randn(2 * i, h, generator=g) / 8, expert_dtype, 32)
    down = quantize(torch.randn(h, i, generator=g) / 8, expert_dtype, 8)
    prepared, _ = kernel.prepare({"gate_up_proj": gate_up, "down_proj": down})
    assert prepared.gate_up.vnni == native.vnni_fits(h, 32) and not prepared.down.vnni
    x = torch.randn(3, h, generator=g)
    got = kernel.compute({0: prepared}, x, torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1))
    first = _int8_activations(x) if prepared.gate_up.vnni else x.double()
    gate, up = F.linear(first, gate_up.dequantize().double()).chunk(2, dim=-1)
    want = F.linear(F.silu(gate) * up, down.dequantize().double())
    assert _relative(got, want) < SAME_MATH_TOLERANCE


@pytest.mark.parametrize("kernel", ["aten", "class"])
def test_other_kernels_widen_the_stored_weights_at_load_and_say_so(kernel, quantized_split):
    weights = open_weights(quantized_split("mixtral", "int4"))
    executor = LocalExpertExecutor(weights, kernel=kernel)
    layer = weights.arch.moe_layers[0].layer
    assert "widened to float32 at load" in executor.kernel_reasons[layer]
    hidden, index, routing = _routing(weights.arch, 4, seed=0)
    got = executor.compute(layer, hidden, index, routing)
    assert _relative(got, _reference(weights, layer, hidden, index, routing, False)) < FLOAT_TOLERANCE
    executor.preload(layer, 3)
    widened = executor.cache.resident_bytes  # the budget counts what is held: the widened bytes
    assert widened > sum(weights.expert_nbytes(layer, e) for e in {*index[index >= 0].tolist(), 3})


@pytest.mark.parametrize("expert_dtype", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v2"])
def test_bf16_experts_without_the_native_kernel_keep_their_quantized_bytes(arch, expert_dtype, quantized_split):
    """kernel="aten" stands for a CPU without AVX-512 (where "auto" picks it), so this runs on every host."""
    weights = open_weights(quantized_split(arch, expert_dtype))
    executor = LocalExpertExecutor(weights, dtype=torch.bfloat16, kernel="aten")
    layer = weights.arch.moe_layers[0].layer
    assert executor.kernels[layer].name == "aten-quantized"
    assert f"kept as stored, torch's weight-only {expert_dtype} kernel" in executor.kernel_reasons[layer]
    for tokens in (1, 5, 11):
        hidden, index, routing = _routing(weights.arch, tokens, seed=tokens)
        hidden, routing = hidden.bfloat16(), routing.bfloat16()
        got = executor.compute(layer, hidden, index, routing)
        assert got.dtype == torch.bfloat16
        want = _reference(weights, layer, hidden.float(), index, routing.float(), quantize_activations=False)
        assert _relative(got, want) < BF16_TOLERANCE
    # As stored (int8's per-row scales in bf16, not float32), not widened: bf16 would be 2-4x the stored bytes.
    stored = sum(weights.expert_nbytes(*expert) for expert in executor.cache.resident())
    assert 0.9 * stored <= executor.cache.resident_bytes <= stored


def test_int4_groups_torch_does_not_take_and_float32_experts_are_widened(quantized_split):
    weights = open_weights(quantized_split("qwen3_moe", "int4", 16))  # torch's int4 kernel takes groups of 32-256
    assert (
        "widened to bfloat16 at load"
        in LocalExpertExecutor(weights, dtype=torch.bfloat16, kernel="aten").kernel_reasons[
            weights.arch.moe_layers[0].layer
        ]
    )
    weights = open_weights(quantized_split("qwen3_moe", "int4"))
    assert (
        "widened to float32 at load"
        in LocalExpertExecutor(weights, kernel="aten").kernel_reasons[weights.arch.moe_layers[0].layer]
    )


def test_a_function_reads_a_quantized_split_without_transformers(quantized_split):
    split = quantized_split("qwen3_moe", "int4")
    lean, why = open_lean(split)
    assert lean is not None, why
    full = open_weights(split)
    layer = full.arch.moe_layers[0].layer
    assert isinstance(lean.read_expert(layer, 2)["down_proj"], QuantizedWeight)
    assert lean.expert_nbytes_as(layer, 2, torch.bfloat16) == full.expert_nbytes(layer, 2)
    hidden, index, routing = _routing(full.arch, 3, seed=5)
    expected = LocalExpertExecutor(full).compute(layer, hidden, index, routing)
    assert torch.equal(LocalExpertExecutor(lean).compute(layer, hidden, index, routing), expected)


def test_a_quantized_model_generates_and_says_what_it_is(quantized_split, tiny_model, capsys):
    from remoe.cli import main

    split = quantized_split("qwen3_moe", "int8")
    exact, quantized = LocalEngine(tiny_model("qwen3_moe"), device="cpu"), LocalEngine(split, device="cpu")
    ids = exact.encode(PROMPT)
    want, got = exact.prefill_logits(ids), quantized.prefill_logits(ids)  # [T, V]
    # int8 experts (with or without int8 activations, as the CPU's kernel has it) move the logits by little
    assert (got - want).abs().max() <= 0.05 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    assert len(quantized.generate(token_ids=ids, max_new_tokens=8).token_ids) == 8
    assert main(["inspect", str(split)]) == 0
    out = capsys.readouterr().out
    assert "stored int8 (per channel; quantized from float32, not exact)" in out
    assert ("packed as stored" if native.load() is not None else "widened to float32 at load") in out


def test_bad_quantization_requests_are_refused_before_anything_is_written(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="does not divide into even groups"):
        split_checkpoint(tiny_model("mixtral"), tmp_path / "a", progress=False, expert_dtype="int4", group_size=24)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()
    with pytest.raises(CheckpointError, match="only expert matrices quantize"):
        split_checkpoint(tiny_model("gpt_oss"), tmp_path / "b", progress=False, expert_dtype="int8")
    with pytest.raises(CheckpointError, match="--expert-dtype must be one of"):
        split_checkpoint(tiny_model("mixtral"), tmp_path / "c", progress=False, expert_dtype="fp8")


def test_a_damaged_quantized_shard_is_an_error_naming_the_key(quantized_split, tmp_path):
    split = tmp_path / "damaged"
    shutil.copytree(quantized_split("qwen3_moe", "int4", 16), split)
    shard = split / Manifest.load(split).layers[0].file
    tensors = load_file(shard)
    key = "layers.0.experts.1.down_proj.scale"
    tensors[key] = tensors[key][:, :1].contiguous()  # a scale too few
    save_file(tensors, str(shard), metadata={"format": "pt"})
    weights = open_weights(split)
    with pytest.raises(CheckpointError, match="layers.0.experts.1.down_proj: stored int4 parts do not fit"):
        LocalExpertExecutor(weights).preload(0, 1)


@pytest.mark.processes
def test_remoe_up_serves_an_int4_split_as_the_in_process_engine_does_and_says_so(quantized_split):
    """Two expert services and half of each layer's experts in functions (which read the int4 shards without
    transformers): the same tokens as LocalEngine on the split, and every usage names the format."""
    import httpx

    from remoe.cluster import LocalCluster
    from remoe.model.tokenizer import load_tokenizer
    from remoe.sdk import Client
    from tests.conftest import warm_functions

    split = quantized_split("qwen3_moe", "int4")
    ids = load_tokenizer(split).encode(PROMPT)
    expected = LocalEngine(split, device="cpu").generate(token_ids=ids, max_new_tokens=16, stop_on_eos=False)
    label = Manifest.load(split).expert_format.label()
    with LocalCluster(split, port=0, remote_ratio=0.5, predictor=False) as cluster:
        client = Client(cluster.address)
        warm_functions(client)
        result = client.generate(token_ids=ids, max_new_tokens=16, ignore_eos=True)
        served = [f for f in client.status().backbone.functions if f.calls > 0]
        body = httpx.post(
            f"{cluster.http_url}/completions",
            json={"model": split.name, "prompt": ids, "max_tokens": 4, "temperature": 0},
            timeout=60,
        ).json()
    assert result.token_ids == expected.token_ids
    assert served, "the functions should have computed batches"
    assert result.usage.expert_format == label
    assert body["usage"]["expert_format"] == label
