"""Modelled cost of CPU, GPU, MIX, Fetch and Remoe on the paper's workload: 50 corpus prompts (first 500
characters), 200 output tokens, batch 1, under every published price set (remoe/scheduler/price_sets.py).

DeepSeek-V2-Lite and GPT2-moe at full size, *modelled*: the scheduler's cost model (remoe/scheduler/estimate.py,
baselines.py) over speeds measured now on this machine's CPU (reduced-layer models of the same shapes: experts in
process, functions by memory size, transfer, the backbone at two layer counts) and GPU-side speeds from
docs/results/gpu_speeds.json (bench/gpu/speeds.py on a GPU). Forecasts are synthetic (a seeded skewed popularity
per layer, per-request Dirichlet noise): the real models' activations are not available. Each request's SLO is
1.5x the MIX baseline's own modelled TTFT and TPOT; every system's attainment of it is reported. Remoe plans at
each set's per-GB prices; a whole-GPU set then bills the main model's GPU as whole cards per second held. The measured
comparison (what processes held, timed at the client) is bench/evaluation.

Usage: python bench/scheduler_costs.py [--requests 50] [--new-tokens 200] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from remoe.corpus.build import read_prompts
from remoe.machine import machine_description, source_commit
from remoe.profiling.measure import measure_bandwidth, measure_experts, measure_functions
from remoe.scheduler.baselines import compare, workload_costs
from remoe.scheduler.price_sets import PRICE_SETS
from remoe.scheduler.problem import Profile
from remoe.scheduler.profile_file import fit_remote
from remoe.scheduler.shape import ModelShape, deepseek_v2_lite, gpt2_moe, shape_of_model

CORPORA = (Path("data/corpus/test.jsonl"), Path(".cache/bench/corpus/test.jsonl"))
GPU_SPEEDS = Path("docs/results/gpu_speeds.json")
SLO_SLACK = 1.5  # each request's SLO: this times MIX's own modelled TTFT and TPOT
sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))


def prompts(n: int) -> list[str]:
    """The first n held-out corpus prompts: data/corpus, else the one bench/evaluation built (bench/gpu's `bench`
    module shadows the bench package here, so its models.corpus() cannot be imported)."""
    found = [path for path in CORPORA if path.is_file()]
    texts = read_prompts(found[0]) if found else []
    if len(texts) < n:
        raise SystemExit(
            f"need {n} prompts in {' or '.join(map(str, CORPORA))}: run `remoe corpus build --out data/corpus`"
        )
    return [t[:500] for t in texts[:n]]


def synthetic_forecasts(shape: ModelShape, count: int, seed: int = 0) -> list[np.ndarray]:
    """[L, E] per request: a skewed popularity per layer (some experts rarely used) with per-request noise."""
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(shape.experts, 0.5), size=shape.layers)  # [L, E]
    return [np.stack([rng.dirichlet(50 * p + 1e-3) for p in popularity]) for _ in range(count)]


def reduced_checkpoint(name: str, out: Path) -> Path:
    """A two-layer random-init checkpoint of the shape, saved as transformers writes it (for CPU profiling)."""
    import torch
    from speeds import deepseek_v2_lite_config, gpt2_moe_like_config
    from transformers import AutoModelForCausalLM

    if (out / "config.json").is_file():
        return out
    config = deepseek_v2_lite_config(2, False) if name == "DeepSeek-V2-Lite" else gpt2_moe_like_config(1, False)
    dtype = torch.bfloat16 if name == "DeepSeek-V2-Lite" else torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    return out


def cpu_profile(name: str, checkpoint: Path, run_dir: Path, gpu: dict) -> tuple[Profile, dict]:
    """This machine's CPU-side speeds for the shape, GPU-side ones from the GPU run, measured the same way on
    both: transformers' model with and without its routed experts (bench/gpu/speeds.py), at two layer counts so
    the embeddings, dense layer and LM head count once per forward, not once per MoE layer."""
    import torch
    from speeds import deepseek_v2_lite_config, gpt2_moe_like_config, layered_speeds, per_moe_layer

    shape = deepseek_v2_lite() if name == "DeepSeek-V2-Lite" else gpt2_moe()
    if name == "DeepSeek-V2-Lite":
        config_of, layers = (lambda n: deepseek_v2_lite_config(n, False)), 2  # the first layer is dense
    else:
        config_of, layers = (lambda n: gpt2_moe_like_config(n, False)), 1
    cpu = layered_speeds(name, config_of, layers, torch.device("cpu"), prompt=64, steps=8, repeats=5)
    cpu_prefill, cpu_decode = per_moe_layer(cpu, shape.layers)
    gpu_prefill, gpu_decode = per_moe_layer(gpu, shape.layers)
    experts = measure_experts(checkpoint, repeats=3)
    bandwidth = measure_bandwidth(16)
    big = 256
    functions = measure_functions(checkpoint, run_dir, big, 5, lambda _: None)
    ys = sorted(functions)
    d_over_b = 2 * shape_of_model(checkpoint).hidden_bytes_per_token / bandwidth
    remote = [max((functions[y][f"rtt_{big}_s"] - functions[y]["rtt_1_s"]) / (big - 1) - d_over_b, 1e-9) for y in ys]
    call = max(float(np.polyfit(*zip(*experts[1], strict=True), 1)[1]), 0.0)  # one thread: a 1 GB function
    # Experts on this CPU, every core: one token's time for a decode step (measured directly: the whole-minus-
    # backbone difference is noise here, where the 102400-word head dominates a step), and the slope through the
    # token counts for a prefill batch, which reads the weights once for all its tokens.
    one_token = experts[max(experts)][0][1]
    batched = max(float(np.polyfit(*zip(*experts[max(experts)], strict=True), 1)[0]), 1e-9)
    profile = Profile(
        local_expert_s_per_token=one_token,
        local_expert_prefill_s_per_token=batched,
        gpu_expert_s_per_token=gpu["gpu_expert_s_per_token"],
        gpu_expert_prefill_s_per_token=gpu["gpu_expert_prefill_s_per_token"],
        # Remoe's and MIX's backbone and the GPU system's are the same GPU's backbone.
        backbone_prefill_s_per_token=gpu_prefill,
        backbone_decode_s=gpu_decode,
        gpu_backbone_prefill_s_per_token=gpu_prefill,
        gpu_backbone_decode_s=gpu_decode,
        cpu_backbone_prefill_s_per_token=cpu_prefill,
        cpu_backbone_decode_s=cpu_decode,
        cpu_expert_s_per_token=one_token,
        cpu_expert_prefill_s_per_token=batched,
        swap_s_per_token=shape.hidden_bytes_per_token / bandwidth,
        invoke_s=statistics.median(functions[y]["rtt_1_s"] for y in ys),
        expert_call_s=call,
        bandwidth_bytes_s=bandwidth,
        cold_start_s=functions[ys[0]]["cold_start_s"],
        remote_fit=fit_remote(ys, remote),
        device="cuda",
    )
    samples = {"remote_s_per_token": dict(zip(map(str, ys), remote, strict=True)), "functions": functions, "cpu": cpu}
    return profile, samples


def modelled(shape: ModelShape, profile: Profile, texts: list[str], new_tokens: int) -> dict:
    """Per price set and system: mean cost per request, latencies and SLO attainment."""
    forecasts = synthetic_forecasts(shape, len(texts))
    requests = []
    for text, frequency in zip(texts, forecasts, strict=True):
        n_in = max(1, round(len(text) / 4))  # about 4 characters per BPE token in English
        mix = compare(shape.request(frequency, n_in, new_tokens), profile)["MIX"]  # latency: price-free
        slo = {"slo_ttft_s": SLO_SLACK * mix.ttft_s, "slo_tpot_s": SLO_SLACK * mix.tpot_s}
        requests.append(shape.request(frequency, n_in, new_tokens, **slo))
    return {price.name: workload_costs(requests, profile, price) for price in PRICE_SETS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    texts = prompts(args.requests)
    tmp = Path(tempfile.mkdtemp(prefix="remoe-costs-"))
    gpu = json.loads(GPU_SPEEDS.read_text())
    results = {
        "machine": machine_description(),
        "gpu_speeds_from": {**gpu["machine"], "date": gpu.get("date", "?")},
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
        "requests": len(texts),
        "new_tokens": args.new_tokens,
        "price_sets": {
            p.name: {"source": p.source, "date": p.date, "ratio": p.ratio, "card_gb": p.whole_gpu_s and p.gpu_memory_gb}
            for p in PRICE_SETS
        },
        "shapes": {},
    }
    for shape in (deepseek_v2_lite(), gpt2_moe()):
        print(f"profiling {shape.name} on this CPU ...", file=sys.stderr, flush=True)
        checkpoint = reduced_checkpoint(shape.name, tmp / shape.name)
        speeds = gpu["shapes"][shape.name]
        profile, samples = cpu_profile(shape.name, checkpoint, tmp / f"{shape.name}-functions", speeds)
        results["shapes"][shape.name] = {
            "shape": shape.as_dict(),
            "gpu_head_counted_once": "backbone_fixed_decode_s" in speeds,
            "profile": {f: getattr(profile, f) for f in profile.__slots__},
            "profile_samples": samples,
            "tables": modelled(shape, profile, texts, args.new_tokens),
        }
        (args.out / "scheduler_costs.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_markdown(results, args.out)
    plot(results, args.out / "scheduler_costs.png")
    print((args.out / "scheduler_costs.md").read_text())


def write_markdown(results: dict, out: Path) -> None:
    gpu = results["gpu_speeds_from"]
    lines = [
        "# Cost per request, modelled: CPU, GPU, MIX, Fetch and Remoe",
        "",
        f"**Modelled** (the scheduler's cost model, not a measurement of these systems): {results['requests']} corpus "
        f"prompts (first 500 characters), {results['new_tokens']} output tokens, batch 1, synthetic forecasts. CPU "
        f"speeds measured on {results['machine']}; GPU speeds on {gpu.get('gpu', '?')} ({gpu.get('date', '?')}, "
        f"bench/gpu/speeds.py). {results['date']}, commit {results['commit']}. Written by "
        "`python bench/scheduler_costs.py`. SLO per request: "
        f"{SLO_SLACK}x MIX's own modelled TTFT and TPOT. Remoe plans at each price set's per-GB prices; whole-GPU "
        "sets bill the main model's GPU as whole cards per second held, as many as its GPU memory needs (a model "
        "that does not fit one card takes two). The measured comparison is `evaluation.md`.",
        "",
    ]
    for name, shape in results["shapes"].items():
        tables = shape["tables"]
        systems = list(next(iter(tables.values())))
        lines += [f"## {name} (modelled, full size)", ""]
        if not shape.get("gpu_head_counted_once"):
            lines += [
                "GPU speeds from a run at one layer count: its embeddings, dense layer and LM head are spread over "
                "that run's MoE layers, so the GPU backbone's per-layer time (GPU, MIX, Fetch and Remoe alike) is "
                "overstated; the CPU's is counted once.",
                "",
            ]
        lines += ["$ per request (x Remoe's), per price set:", ""]
        lines += ["| price set | c_g/c_c | " + " | ".join(systems) + " | Remoe SLO met |"]
        lines += ["|---|---|" + "---|" * len(systems) + "---|"]
        for price, rows in tables.items():
            remoe = rows["Remoe"]["mean_cost"]
            cells = [f"{rows[s]['mean_cost']:.3g} ({rows[s]['mean_cost'] / remoe:.2f}x)" for s in systems]
            ratio, met = results["price_sets"][price]["ratio"], rows["Remoe"]["slo_attainment"]
            card = results["price_sets"][price].get("card_gb", 0)
            ratio_cell = f"whole {card:g} GB cards (plans at {ratio:.2f})" if card else f"{ratio:.2f}"
            lines.append(f"| {price} | {ratio_cell} | " + " | ".join(cells) + f" | {met:.0%} |")
        first = next(iter(tables))
        lines += ["", f"Latency and memory (Remoe planned at {first}; function invocations per request are billed "]
        lines[-1] += "where the set has a per-request fee):"
        lines += ["", "| system | TTFT (s) | TPOT (ms) | SLO met | GPU GB | CPU GB | function invocations |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for system, r in tables[first].items():
            lines.append(
                f"| {system} | {r['mean_ttft_s']:.2f} | {r['mean_tpot_s'] * 1e3:.1f} | {r['slo_attainment']:.0%} | "
                f"{r['mean_gpu_gb']:.1f} | {r['mean_cpu_gb']:.1f} | {r.get('mean_invocations', 0):.0f} |"
            )
        lines.append("")
    lines += ["Price sets:", ""]
    lines += [f"- {name}: {p['source']} (read {p['date']})" for name, p in results["price_sets"].items()]
    (out / "scheduler_costs.md").write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(results["shapes"])
    tables = list(next(iter(results["shapes"].values()))["tables"])
    fig, axes = plt.subplots(len(shapes), len(tables), figsize=(3.4 * len(tables), 3.2 * len(shapes)), squeeze=False)
    for i, shape in enumerate(shapes):
        for j, table in enumerate(tables):
            rows = results["shapes"][shape]["tables"][table]
            names = list(rows)
            costs = [rows[n]["mean_cost"] * 1e3 for n in names]
            bars = axes[i][j].bar(names, costs, color=["#999", "#555", "#48c", "#8a4", "#d62"])
            for bar, n in zip(bars, names, strict=True):
                if rows[n]["slo_attainment"] < 1:
                    bar.set_hatch("//")
            axes[i][j].set_title(f"{shape}\n{table}", fontsize=7)
            axes[i][j].set_yscale("log")
            axes[i][j].tick_params(labelsize=7)
        axes[i][0].set_ylabel("$ per 1000 requests (log)")
    fig.suptitle("MODELLED cost per request (hatched: misses the SLO on some requests)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
