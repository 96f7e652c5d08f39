"""Expert kernels: each fast kernel equals the architecture's own experts class, and what it cannot cover
falls back to the class. T = tokens, K = top-k, H = hidden size."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from remoe.checkpoint.weights import open_weights
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.kernels import choose_kernel, native
from remoe.experts.kernels.family import inspect_gated
from remoe.model.engine import LocalEngine
from tests.conftest import ARCHS, PROMPT, reference_generate

GATED = [a for a in ARCHS if a != "gpt_oss"]  # every tiny arch but GPT-OSS is in the gated-SiLU family
FAST = ["native", "aten", "onednn"]
needs_native = pytest.mark.skipif(native.load() is None, reason=f"native kernel: {native.unavailable_reason()}")


def _routing(arch, tokens: int, seed: int = 0, elsewhere: float = 0.0):
    """hidden [T, H], index [T, K] with a share `elsewhere` of slots -1 (served by another destination), weights."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, arch.hidden_size, generator=g)
    index = torch.stack([torch.randperm(arch.num_experts, generator=g)[: arch.top_k] for _ in range(tokens)])
    index[torch.rand(index.shape, generator=g) < elsewhere] = -1
    return hidden, index, torch.rand(tokens, arch.top_k, generator=g)


def _kernel_name(executor: LocalExpertExecutor, layer: int) -> str:
    return executor.kernels[layer].name


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("arch_name", GATED)
@pytest.mark.parametrize("tokens", [1, 3, 9, 40])
def test_fast_kernels_equal_the_architecture_class(arch_name, kernel, tokens, tiny_model):
    """Decode (1-3 rows), past one 8-row pass of the weights (9), prefill (40), with slots served elsewhere."""
    if kernel == "native" and native.load() is None:
        pytest.skip(f"native kernel: {native.unavailable_reason()}")
    weights = open_weights(tiny_model(arch_name))
    arch = weights.arch
    fast, reference = LocalExpertExecutor(weights, kernel=kernel), LocalExpertExecutor(weights, kernel="class")
    for layer in arch.layer_indices:
        assert _kernel_name(fast, layer) == kernel and _kernel_name(reference, layer) == "class"
        hidden, index, routing = _routing(arch, tokens, seed=layer, elsewhere=0.25)
        expected = reference.compute(layer, hidden, index, routing)
        torch.testing.assert_close(fast.compute(layer, hidden, index, routing), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch_name", GATED)
def test_auto_picks_the_native_kernel_and_generates_transformers_tokens(arch_name, tiny_model, reference):
    """The default path (auto) through LocalEngine: same greedy tokens as transformers, prefill logits within
    1e-4 in float32; and the aten kernel, the fallback where native cannot build, the same."""
    engine = LocalEngine(tiny_model(arch_name), device="cpu")
    expected_kernel = "native" if native.load() is not None else "aten"
    assert {k.name for k in engine.executor.kernels.values()} == {expected_kernel}
    model = reference(arch_name)
    ids = engine.encode(PROMPT)
    want = reference_generate(model, ids, 12)
    with torch.inference_mode():
        ref_logits = model(torch.tensor([ids])).logits[0]
    for kernel in (expected_kernel, "aten"):
        executor = LocalExpertExecutor(engine.weights, kernel=kernel)
        engine = LocalEngine(tiny_model(arch_name), device="cpu", executor=executor)
        assert engine.generate(token_ids=ids, max_new_tokens=12).token_ids == want
        torch.testing.assert_close(engine.prefill_logits(ids), ref_logits, rtol=0, atol=1e-4)


def test_gpt_oss_falls_back_to_its_class_and_stays_exact(tiny_model, reference):
    """GPT-OSS's clamped SwiGLU with biases is outside the gated-MLP family: every kernel asked for gives the class."""
    path = tiny_model("gpt_oss")
    for kernel in ("auto", *FAST):
        executor = LocalExpertExecutor(open_weights(path), kernel=kernel)
        assert {k.name for k in executor.kernels.values()} == {"class"}
        assert all("has_bias=True" in why for why in executor.kernel_reasons.values())
    engine = LocalEngine(path, device="cpu")
    ids = engine.encode(PROMPT)
    want = reference_generate(reference("gpt_oss"), ids, 12)
    assert engine.generate(token_ids=ids, max_new_tokens=12).token_ids == want


def test_a_module_whose_own_math_differs_is_caught_by_the_probe(tiny_model):
    """Same attributes and parameters as the family, a different forward (weights applied twice): the probe on
    seeded random weights sees it and the layer runs through its class."""
    weights = open_weights(tiny_model("mixtral"))
    template = weights.arch.experts_module(weights.arch.layer_indices[0])
    base = type(template)

    class TwistedExperts(base):  # the same module, its eager forward squaring the router weight
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return base.forward(self, hidden_states, top_k_index, top_k_weights * top_k_weights)

    twisted = TwistedExperts.__new__(TwistedExperts)
    twisted.__dict__.update(template.__dict__)
    reason = inspect_gated(twisted)
    assert isinstance(reason, str) and "differs from the gated-MLP math" in reason
    kernel, why = choose_kernel(twisted, torch.float32, "auto")
    assert kernel.name == "class" and "differs" in why
    assert not isinstance(inspect_gated(template), str)


def test_without_the_native_kernel_auto_takes_aten(tiny_model, monkeypatch):
    """Where the kernel cannot be built (no compiler, no AVX-512), auto says why and uses torch's kernels."""
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C compiler found (install gcc)")
    executor = LocalExpertExecutor(open_weights(tiny_model("olmoe")))
    assert {k.name for k in executor.kernels.values()} == {"aten"}
    assert all("no C compiler" in why for why in executor.kernel_reasons.values())


def test_unknown_kernel_is_refused_by_name(tiny_model):
    with pytest.raises(ValueError, match="expert kernel must be one of"):
        LocalExpertExecutor(open_weights(tiny_model("olmoe")), kernel="fastest")


@pytest.mark.parametrize("kernel", FAST)
def test_the_budget_counts_the_prepared_bytes(kernel, tiny_model):
    if kernel == "native" and native.load() is None:
        pytest.skip(f"native kernel: {native.unavailable_reason()}")
    weights = open_weights(tiny_model("qwen3_moe"))
    executor = LocalExpertExecutor(weights, kernel=kernel)
    executor.preload(0, 1)
    executor.preload(0, 5)
    prepared = [executor.cache.get((0, e)) for e in (1, 5)]
    assert executor.cache.resident_bytes == sum(p.gate_up.nbytes + p.down.nbytes for p in prepared)
    assert executor.cache.resident_bytes >= sum(weights.expert_nbytes(0, e) for e in (1, 5))


@needs_native
def test_native_packs_weights_into_fresh_memory_with_padding(tiny_model):
    """Rows are padded to whole 16-row blocks, and the packed copy shares nothing with the file's pages."""
    w = torch.arange(20 * 3, dtype=torch.float32).view(20, 3)
    packed = native.pack(w).weight
    assert packed.numel() == 32 * 3 and packed.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    blocks = packed.view(2, 3, 16)  # [N/16, K, 16]
    assert torch.equal(blocks[0].T, w[:16]) and torch.equal(blocks[1].T[:4], w[16:])
    assert not blocks[1].T[4:].any()


@needs_native
def test_native_bf16_rounds_like_the_eager_bf16_class(tiny_model, tmp_path):
    """bf16 weights: the native kernel widens to float32 but rounds where the class stores a bf16 result, so
    it agrees with the class to bf16 rounding (and a bf16 model generates as many tokens)."""
    ckpt = tmp_path / "bf16"
    shutil.copytree(tiny_model("qwen2_moe"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (ckpt / "config.json").write_text(json.dumps(config))
    weights = open_weights(ckpt)
    arch = weights.arch
    fast = LocalExpertExecutor(weights, dtype=torch.bfloat16)
    reference = LocalExpertExecutor(weights, dtype=torch.bfloat16, kernel="class")
    assert {k.name for k in fast.kernels.values()} == {"native"}
    for tokens in (1, 6):
        hidden, index, routing = _routing(arch, tokens, seed=tokens)
        hidden, routing = hidden.bfloat16(), routing.bfloat16()
        got, want = fast.compute(0, hidden, index, routing), reference.compute(0, hidden, index, routing)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
        assert (got == want).float().mean() > 0.9  # mostly bit-equal: the same roundings at the same points


def test_inspect_says_which_kernel_each_layer_takes(tiny_model, capsys):
    from remoe.cli import main

    assert main(["inspect", str(tiny_model("deepseek_v2"))]) == 0
    out = capsys.readouterr().out
    expected = "native gated-SiLU" if native.load() is not None else "aten gated-MLP"
    assert f"layers 1-3: {expected}" in out  # layer 0 is dense
    assert main(["inspect", str(tiny_model("gpt_oss")), "--kernel", "native"]) == 0
    assert "class GptOssExperts (has_bias=True" in capsys.readouterr().out
