"""Cost of CPU, GPU, MIX, Fetch and Remoe on the paper's workload: 50 corpus prompts (first 500 characters),
200 output tokens, batch 1, under two price tables (published serverless prices, and the paper's c_g/c_c = 3).

- Modelled: DeepSeek-V2-Lite and GPT2-moe at full size. CPU-side speeds (experts in process, functions by
  memory size, transfer) measured now on this machine on reduced-layer models of the same shapes; GPU-side
  speeds from docs/results/gpu_speeds.json (bench/gpu/speeds.py on a GPU). Forecasts are synthetic (a seeded
  skewed popularity per layer, per-request Dirichlet noise): the real models' activations are not available.
- Measured: the trained tiny model through `remoe up` (Remoe: profile + scheduler + functions; MIX: every
  expert on the expert services) with each request's cost read from the metering ledger, and CPU as the whole
  model in one process; GPU and Fetch modelled from the same profile (no GPU here).
The SLO each request is planned under is 1.5x the MIX baseline's own modelled TTFT and TPOT (one function holding
the whole model, experts on its CPU); every system's attainment of it is reported.

Usage: python bench/scheduler_costs.py [--requests 50] [--new-tokens 200] [--skip-measured] [--out docs/results]
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
from remoe.machine import machine_description
from remoe.profiling.measure import measure_bandwidth, measure_experts, measure_functions
from remoe.scheduler.baselines import compare, workload_costs
from remoe.scheduler.problem import Prices, Profile
from remoe.scheduler.profile_file import fit_remote
from remoe.scheduler.shape import ModelShape, deepseek_v2_lite, gpt2_moe, shape_of_model

CORPUS = Path("data/corpus/test.jsonl")
TRAINED = Path("data/models/trained-qwen3")
GPU_SPEEDS = Path("docs/results/gpu_speeds.json")
PAPER_RATIO = 3.0  # the paper assumes c_g / c_c >= 3
SLO_SLACK = 1.5  # each request's SLO: this times MIX's own modelled TTFT and TPOT
sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))


def price_tables() -> dict[str, Prices]:
    published = Prices()
    return {
        "published (Lambda x86, Cloud Run L4)": published,
        "paper (c_g = 3 c_c)": Prices(published.cpu_gb_s, PAPER_RATIO * published.cpu_gb_s),
    }


def prompts(n: int) -> list[str]:
    texts = read_prompts(CORPUS) if CORPUS.is_file() else []
    if len(texts) < n:
        raise SystemExit(f"need {n} prompts in {CORPUS}: run `remoe corpus build --out data/corpus` first")
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
    both: transformers' model with and without its routed experts (bench/gpu/speeds.py), per MoE layer."""
    import torch
    from speeds import deepseek_v2_lite_config, gpt2_moe_like_config, speeds

    config = deepseek_v2_lite_config(2, False) if name == "DeepSeek-V2-Lite" else gpt2_moe_like_config(1, False)
    cpu = speeds(name, config, torch.device("cpu"), prompt=64, steps=8, repeats=2)
    experts = measure_experts(checkpoint, repeats=3)
    bandwidth = measure_bandwidth(16)
    big = 256
    functions = measure_functions(checkpoint, run_dir, big, 5, lambda _: None)
    ys = sorted(functions)
    shape = shape_of_model(checkpoint)
    d_over_b = 2 * shape.hidden_bytes_per_token / bandwidth
    remote = [max((functions[y][f"rtt_{big}_s"] - functions[y]["rtt_1_s"]) / (big - 1) - d_over_b, 1e-9) for y in ys]
    call = max(float(np.polyfit(*zip(*experts[1], strict=True), 1)[1]), 0.0)  # one thread: a 1 GB function
    profile = Profile(
        # Experts per token as a decode step sees them (one token per expert call): on this CPU one expert's
        # time for one token, all cores (measured directly: the whole-minus-backbone difference is noise here,
        # where the backbone's 102400-word head dominates a step); on the GPU that difference (speeds.py).
        local_expert_s_per_token=experts[max(experts)][0][1],
        gpu_expert_s_per_token=gpu["gpu_expert_s_per_token"],
        backbone_prefill_s_per_token=gpu["backbone_prefill_s_per_token"],
        backbone_decode_s=gpu["backbone_decode_s"],
        cpu_backbone_prefill_s_per_token=cpu["backbone_prefill_s_per_token"],
        cpu_backbone_decode_s=cpu["backbone_decode_s"],
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
    """Per price table and system: mean cost per request, latencies and SLO attainment."""
    forecasts = synthetic_forecasts(shape, len(texts))
    tables = {}
    for table, prices in price_tables().items():
        requests = []
        for text, frequency in zip(texts, forecasts, strict=True):
            n_in = max(1, round(len(text) / 4))  # about 4 characters per BPE token in English
            mix = compare(shape.request(frequency, n_in, new_tokens), profile, prices)["MIX"]
            slo = {"slo_ttft_s": SLO_SLACK * mix.ttft_s, "slo_tpot_s": SLO_SLACK * mix.tpot_s}
            requests.append(shape.request(frequency, n_in, new_tokens, **slo))
        tables[table] = workload_costs(requests, profile, prices)
    return tables


def measured_tiny(texts: list[str], new_tokens: int, tmp: Path) -> dict:
    """The trained tiny model, published prices: Remoe through `remoe up` with its profile and scheduler (cost
    from the metering ledger), MIX through `remoe up` with every expert on the expert services (same metering
    formula), CPU as the whole model in one process."""
    from remoe.cluster import LocalCluster
    from remoe.model.engine import LocalEngine
    from remoe.profiling.profile import profile_model
    from remoe.scheduler.estimate import GIB, main_memory_gb
    from remoe.scheduler.ledger import Ledger
    from remoe.scheduler.problem import Limits
    from remoe.scheduler.shape import shape_of_model
    from remoe.sdk import Client

    model, prices = TRAINED, Prices()
    shape = shape_of_model(model)
    profile_model(model, progress=False, run_dir=tmp / "profile").save(tmp / "profile.json")
    systems = {}

    def serve(cluster: LocalCluster) -> list:
        with Client(cluster.address) as client:
            client.generate(prompt=texts[0], max_new_tokens=2, request_id="warm-up")
            return [
                client.generate(prompt=t, max_new_tokens=new_tokens, ignore_eos=True, request_id=f"r{i}").usage
                for i, t in enumerate(texts)
            ]

    with LocalCluster(model, port=0, predictor=True, profile=tmp / "profile.json", run_dir=tmp / "remoe") as cluster:
        if not cluster.redis_url:
            raise SystemExit("redis-server is needed for the metering ledger (apt-get install redis-server)")
        serve(cluster)
        records = [r for r in Ledger(cluster.redis_url).read() if r.request_id.startswith("r")]
    systems["Remoe"] = {
        "mean_cost": float(np.mean([r.cost for r in records])),
        "mean_ttft_s": float(np.mean([r.measured_ttft_s for r in records])),
        "mean_tpot_s": float(np.mean([r.measured_tpot_s for r in records])),
        "requests_with_functions": sum(1 for r in records if r.functions),
    }
    gpu_gb, cpu_gb = main_memory_gb(shape.request(None, 1, 0), [()] * shape.layers, Limits())
    with LocalCluster(model, port=0, predictor=False, scheduler=False, run_dir=tmp / "mix") as cluster:
        usages = serve(cluster)
    busy = [u.ttft_s + (u.completion_tokens - 1) * u.tpot_s for u in usages]
    systems["MIX"] = {
        "mean_cost": float(np.mean(busy)) * (prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb),
        "mean_ttft_s": float(np.mean([u.ttft_s for u in usages])),
        "mean_tpot_s": float(np.mean([u.tpot_s for u in usages])),
    }
    engine = LocalEngine(model)
    runs = [engine.generate(prompt=t, max_new_tokens=new_tokens, stop_on_eos=False) for t in texts]
    busy = [r.ttft_s + (len(r.token_ids) - 1) * r.tpot_s for r in runs]
    weights_gb = max(1.0, (shape.backbone_bytes + shape.layers * shape.experts * shape.expert_bytes) / GIB)
    systems["CPU"] = {
        "mean_cost": float(np.mean(busy)) * weights_gb * prices.cpu_gb_s,
        "mean_ttft_s": float(np.mean([r.ttft_s for r in runs])),
        "mean_tpot_s": float(np.mean([r.tpot_s for r in runs])),
    }
    return {"model": str(model), "systems": systems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument(
        "--skip-measured", action="store_true", help="only the modelled shapes (keeps the last run's measured rows)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    texts = prompts(args.requests)
    previous = args.out / "scheduler_costs.json"
    kept = None  # --skip-measured keeps the last run's measured rows
    if args.skip_measured and previous.is_file():
        kept = json.loads(previous.read_text()).get("measured_tiny")
    tmp = Path(tempfile.mkdtemp(prefix="remoe-costs-"))
    gpu = json.loads(GPU_SPEEDS.read_text())
    results = {
        "machine": machine_description(),
        "gpu_speeds_from": gpu["machine"],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "requests": len(texts),
        "new_tokens": args.new_tokens,
        "shapes": {},
    }
    for shape in (deepseek_v2_lite(), gpt2_moe()):
        print(f"profiling {shape.name} on this CPU ...", file=sys.stderr, flush=True)
        checkpoint = reduced_checkpoint(shape.name, tmp / shape.name)
        profile, samples = cpu_profile(
            shape.name, checkpoint, tmp / f"{shape.name}-functions", gpu["shapes"][shape.name]
        )
        results["shapes"][shape.name] = {
            "shape": shape.as_dict(),
            "profile": {f: getattr(profile, f) for f in profile.__slots__},
            "profile_samples": samples,
            "tables": modelled(shape, profile, texts, args.new_tokens),
        }
        (args.out / "scheduler_costs.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if kept is not None:
        results["measured_tiny"] = kept
    elif not args.skip_measured and (TRAINED / "config.json").is_file():
        print("measuring the trained tiny model through remoe up ...", file=sys.stderr, flush=True)
        results["measured_tiny"] = measured_tiny(texts, args.new_tokens, tmp)
    (args.out / "scheduler_costs.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_markdown(results, args.out)
    plot(results, args.out / "scheduler_costs.png")
    print((args.out / "scheduler_costs.md").read_text())


def write_markdown(results: dict, out: Path) -> None:
    lines = [
        "# Cost per request: CPU, GPU, MIX, Fetch and Remoe",
        "",
        f"{results['requests']} corpus prompts (first 500 characters), {results['new_tokens']} output tokens, batch 1. "
        f"CPU speeds: {results['machine']}; GPU speeds: {results['gpu_speeds_from'].get('gpu', '?')} "
        f"(bench/gpu/speeds.py); {results['date']}. SLO per request: {SLO_SLACK}x MIX's own modelled TTFT and TPOT.",
        "",
    ]
    for name, shape in results["shapes"].items():
        for table, rows in shape["tables"].items():
            lines += [f"## {name} (modelled, full size), prices: {table}", ""]
            lines += ["| system | $ per request | vs Remoe | TTFT (s) | TPOT (ms) | SLO met | GPU GB | CPU GB |"]
            lines += ["|---|---|---|---|---|---|---|---|"]
            remoe = rows["Remoe"]["mean_cost"]
            for system, r in rows.items():
                lines.append(
                    f"| {system} | {r['mean_cost']:.3g} | {r['mean_cost'] / remoe:.2f}x | {r['mean_ttft_s']:.2f} | "
                    f"{r['mean_tpot_s'] * 1e3:.1f} | {r['slo_attainment']:.0%} | {r['mean_gpu_gb']:.1f} | "
                    f"{r['mean_cpu_gb']:.1f} |"
                )
            lines.append("")
    tiny = results.get("measured_tiny")
    if tiny:
        lines += ["## Trained tiny model, measured on this machine (published prices)", ""]
        lines += ["| system | $ per request | TTFT (ms) | TPOT (ms) | how |", "|---|---|---|---|---|"]
        how = {
            "Remoe": "remoe up with profile + scheduler; metering ledger",
            "MIX": "remoe up, every expert on the expert services",
            "CPU": "whole model in one process",
        }
        for system, r in tiny["systems"].items():
            lines.append(
                f"| {system} | {r['mean_cost']:.3g} | {r['mean_ttft_s'] * 1e3:.1f} | {r['mean_tpot_s'] * 1e3:.2f} | "
                f"{how.get(system, '')} |"
            )
        lines.append("")
    (out / "scheduler_costs.md").write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(results["shapes"])
    tables = list(next(iter(results["shapes"].values()))["tables"])
    fig, axes = plt.subplots(1, len(shapes) * len(tables), figsize=(4 * len(shapes) * len(tables), 3.6))
    for i, (shape, table) in enumerate((s, t) for s in shapes for t in tables):
        rows = results["shapes"][shape]["tables"][table]
        names = list(rows)
        costs = [rows[n]["mean_cost"] * 1e3 for n in names]
        bars = axes[i].bar(names, costs, color=["#999", "#555", "#48c", "#8a4", "#d62"])
        for bar, n in zip(bars, names, strict=True):
            if rows[n]["slo_attainment"] < 1:
                bar.set_hatch("//")
        axes[i].set_title(f"{shape}\n{table}", fontsize=8)
        axes[i].set_ylabel("$ per 1000 requests (log)")
        axes[i].set_yscale("log")
    fig.suptitle("cost per request (hatched: misses the SLO on some requests)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
