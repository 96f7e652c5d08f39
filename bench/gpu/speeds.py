"""GPU speeds for the scheduler's cost model: per MoE layer, the backbone's prefill and decode time on the GPU and
the routed experts' time per token there, for the paper's two model shapes (random init, bf16, a few layers).

Each shape is timed twice with transformers on the GPU: the whole model, and the model with every routed-expert
module answering zeros (the backbone alone). The difference is the experts' share. Each is timed at two layer
counts, so the backbone's per-layer time and its fixed part (embeddings, dense layer, LM head) come apart.
Results: OUT/gpu_speeds.json, read by bench/scheduler_costs.py for the GPU, Fetch and Remoe-backbone terms of
the modelled shapes.

Usage: python bench/gpu/speeds.py --out DIR [--device cuda] [--small]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import deepseek_v2_lite_config, machine  # noqa: E402
from remoe.checkpoint.architecture import Architecture  # noqa: E402
from remoe.scheduler.shape import GPT2_MOE_LIKE  # noqa: E402


def gpt2_moe_like_config(layers: int, small: bool) -> AutoConfig:
    """GPT2-moe's dimensions on qwen3_moe (remoe/scheduler/shape.py GPT2_MOE_LIKE); `small` shrinks it."""
    fields = {**GPT2_MOE_LIKE, "num_hidden_layers": layers}
    if small:
        fields.update(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=128,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=16)  # fmt: skip
    return AutoConfig.for_model("qwen3_moe", **fields)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_model(model, device: torch.device, prompt: int, steps: int, repeats: int) -> tuple[float, float]:
    """(prefill seconds for `prompt` tokens, seconds per decode step), medians."""
    ids = torch.randint(3, model.config.vocab_size - 1, (1, prompt), device=device)
    prefill, decode = [], []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms kernels up
            _sync(device)
            start = time.perf_counter()
            out = model(ids, use_cache=True)
            _sync(device)
            prefill.append(time.perf_counter() - start)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            step_times = []
            for _ in range(steps):
                start = time.perf_counter()
                out = model(token, past_key_values=past, use_cache=True)
                _sync(device)
                step_times.append(time.perf_counter() - start)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            decode.append(statistics.median(step_times))
    return statistics.median(prefill[1:]), statistics.median(decode[1:])


def silence_experts(model, config) -> int:
    """Every routed-expert module returns zeros (the router, attention and shared parts still run)."""
    arch = Architecture.from_config(config)
    for layer in arch.moe_layers:
        module = model.get_submodule(layer.path)
        module.forward = lambda hidden_states, *args, **kwargs: torch.zeros_like(hidden_states)
    return len(arch.moe_layers)


def speeds(name: str, config, device: torch.device, prompt: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    with device:  # initialised where it runs: no slow CPU init of billions of random weights
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    full = time_model(model, device, prompt, steps, repeats)
    moe_layers = silence_experts(model, config)
    backbone = time_model(model, device, prompt, steps, repeats)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    k = int(config.num_experts_per_tok)
    expert_prefill = max(full[0] - backbone[0], 0.0) / moe_layers  # per MoE layer
    expert_decode = max(full[1] - backbone[1], 0.0) / moe_layers
    return {
        "model": name,
        "layers": int(config.num_hidden_layers),
        "moe_layers": moe_layers,
        "prompt_tokens": prompt,
        "whole_prefill_s": full[0],
        "whole_decode_step_s": full[1],
        "backbone_only_prefill_s": backbone[0],
        "backbone_only_decode_step_s": backbone[1],
        # Profile fields (per MoE layer; the backbone's dense layer, embeddings and head spread over them):
        "backbone_prefill_s_per_token": backbone[0] / moe_layers / prompt,
        "backbone_decode_s": backbone[1] / moe_layers,
        "gpu_expert_s_per_token": expert_decode / k,
        "gpu_expert_prefill_s_per_token": expert_prefill / (prompt * k),
    }


def layered_speeds(
    name: str, config_of, layers: int, device: torch.device, prompt: int, steps: int, repeats: int, extra: int = 3
):
    """speeds() at `layers` and `layers + extra` decoder layers: the extra MoE layers' backbone time per layer is
    the per-layer term, and what is left of the smaller model (embeddings, dense layers, final norm, LM head) a
    fixed term counted once per forward, however many layers the full model has. Several extra layers, so their
    time stands above the run-to-run noise of a step the LM head dominates."""
    small, large = (speeds(name, config_of(n), device, prompt, steps, repeats) for n in (layers, layers + extra))
    extra = large["moe_layers"] - small["moe_layers"]
    prefill = max((large["backbone_only_prefill_s"] - small["backbone_only_prefill_s"]) / extra, 0.0)
    decode = max((large["backbone_only_decode_step_s"] - small["backbone_only_decode_step_s"]) / extra, 0.0)
    return {
        **large,
        "runs": [small, large],
        "backbone_prefill_s_per_token": prefill / prompt,  # per MoE layer
        "backbone_decode_s": decode,
        "backbone_fixed_prefill_s": max(small["backbone_only_prefill_s"] - small["moe_layers"] * prefill, 0.0),
        "backbone_fixed_decode_s": max(small["backbone_only_decode_step_s"] - small["moe_layers"] * decode, 0.0),
    }


def per_moe_layer(speeds: dict, moe_layers: int) -> tuple[float, float]:
    """(backbone prefill s per token, backbone decode s), per MoE layer of a model with `moe_layers` of them: the
    fixed term spread over them (a file from before layered_speeds spread it over its own few layers)."""
    prompt = speeds["prompt_tokens"]
    return (
        speeds["backbone_prefill_s_per_token"] + speeds.get("backbone_fixed_prefill_s", 0.0) / moe_layers / prompt,
        speeds["backbone_decode_s"] + speeds.get("backbone_fixed_decode_s", 0.0) / moe_layers,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny dimensions: a CPU smoke test")
    parser.add_argument("--layers", type=int, default=5, help="decoder layers (DeepSeek's first is dense)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(device), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "shapes": {}}
    for name, config_of, layers in (
        ("DeepSeek-V2-Lite", lambda n: deepseek_v2_lite_config(n, args.small), args.layers),
        ("GPT2-moe", lambda n: gpt2_moe_like_config(n, args.small), args.layers - 1),
    ):
        results["shapes"][name] = layered_speeds(name, config_of, layers, device, args.prompt_tokens, 16, 5)
        print(json.dumps(results["shapes"][name]), flush=True)
        (args.out / "gpu_speeds.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
