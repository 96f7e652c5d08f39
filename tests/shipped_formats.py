"""Quantized checkpoints written as the hub ships them, made offline from a seeded float32 checkpoint.

- `write_mxfp4`: GPT-OSS's layout. Each experts tensor `X` [E, in, out] becomes `X_blocks` uint8
  [E, out, in/32, 16] (e2m1 codes, two a byte, the low nibble first) and `X_scales` uint8 [E, out, in/32]
  (e8m0, 2^(s - 127)); `quantization_config` {"quant_method": "mxfp4", "modules_to_not_convert": [...]}.
- `write_block_fp8`: DeepSeek-V3's layout. Every linear weight but the embeddings, the LM head and the
  routers becomes float8_e4m3fn beside `weight_scale_inv` float32 [ceil(N/b), ceil(K/b)];
  `quantization_config` {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
  "weight_block_size": [b, b]}.
The encoders here need only be valid encodings: the tests compare Remoe's reading of the bytes with transformers'.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from remoe.model.tiny import build_tokenizer

_FP4_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_FP8_MAX = 448.0  # float8_e4m3fn's largest value


def make_tiny_deepseek_v3(out: Path, seed: int = 0) -> Path:
    """A seeded float32 DeepSeek-V3 (MLA with q LoRA, a dense first layer, a shared expert, grouped routing)."""
    tokenizer = build_tokenizer(512)
    config = AutoConfig.for_model(
        "deepseek_v3",
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        moe_intermediate_size=32,
        intermediate_size=128,
        kv_lora_rank=32,
        q_lora_rank=48,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_group=2,
        topk_group=1,
        max_position_embeddings=1024,
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def mxfp4_encode(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[.., in, out] float -> blocks uint8 [.., out, in/32, 16], scales uint8 [.., out, in/32]."""
    rows = weight.transpose(-1, -2).float()  # [.., out, in]
    groups = rows.reshape(*rows.shape[:-1], rows.shape[-1] // 32, 32)
    exponent = torch.floor(torch.log2(groups.abs().amax(-1).clamp_min(2.0**-100))) - 2  # 6 = 1.5 x 2^2
    scaled = groups / torch.exp2(exponent)[..., None]
    code = (scaled.abs()[..., None] - _FP4_MAGNITUDES).abs().argmin(-1) + 8 * (scaled < 0)
    code = code.to(torch.uint8)
    return (code[..., 0::2] | (code[..., 1::2] << 4)).contiguous(), (exponent + 127).to(torch.uint8)


def block_fp8_encode(weight: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> float8_e4m3fn [N, K], scale_inv float32 [ceil(N/b), ceil(K/b)] (edge blocks partial)."""
    n, k = weight.shape
    gn, gk = -(-n // block), -(-k // block)
    padded = torch.zeros(gn * block, gk * block)
    padded[:n, :k] = weight.float()
    blocks = padded.reshape(gn, block, gk, block)
    scale = blocks.abs().amax((1, 3)).clamp_min(1e-12) / _FP8_MAX  # [gn, gk]
    q = (blocks / scale[:, None, :, None]).reshape(gn * block, gk * block)[:n, :k]
    return q.to(torch.float8_e4m3fn).contiguous(), scale


def _rewrite(src: Path, out: Path, tensors: dict[str, torch.Tensor], quantization_config: dict) -> Path:
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _tensors(src: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def write_mxfp4(src: Path, out: Path) -> Path:
    """GPT-OSS checkpoint `src` (fused experts) with its experts in MXFP4, as OpenAI ships it."""
    tensors = {}
    for key, t in _tensors(src).items():
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            tensors[key + "_blocks"], tensors[key + "_scales"] = mxfp4_encode(t)
        else:
            tensors[key] = t
    not_converted = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
    return _rewrite(src, out, tensors, {"quant_method": "mxfp4", "modules_to_not_convert": not_converted})


def write_block_fp8(src: Path, out: Path, block: int = 8) -> Path:
    """DeepSeek-V3-style checkpoint `src` with its linear weights in block FP8, as DeepSeek ships V3."""
    tensors = {}
    for key, t in _tensors(src).items():
        quantized = (
            key.endswith(".weight")
            and t.ndim == 2
            and not key.endswith(("embed_tokens.weight", "lm_head.weight", "mlp.gate.weight"))
        )
        if quantized:
            tensors[key], tensors[key.removesuffix("weight") + "weight_scale_inv"] = block_fp8_encode(t, block)
        else:
            tensors[key] = t
    config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [block, block]}
    return _rewrite(src, out, tensors, config)
