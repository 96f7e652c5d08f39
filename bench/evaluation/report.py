"""evaluation.md and its plots from the evaluation's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.evaluation import model_check, price_table

ORDER = ["CPU", "GPU", "MIX", "Fetch", "Remoe", "Remoe-oracle"]
HOW = {
    "CPU": "whole model in one process (LocalEngine), priced as CPU memory",
    "GPU": "remoe up, every expert in the backbone process; priced as GPU memory (the device is this CPU here)",
    "MIX": "remoe up, experts on the expert services (the main model's CPU)",
    "Fetch": "modelled: idealised offloading, this machine's profile",
    "Remoe": "remoe up + profile + SPS predictor + scheduler; cost from the metering ledger",
    "Remoe-oracle": "as Remoe, forecast = the request's own prefill activation",
}
COLORS = {"CPU": "#999", "GPU": "#555", "MIX": "#48c", "Fetch": "#8a4", "Remoe": "#d62", "Remoe-oracle": "#e9a"}


def summary(run: dict, slo_ttft: float, slo_tpot: float, burst_starts: list[int]) -> dict:
    rs = run["results"]
    ttft = np.array([r["ttft_s"] for r in rs])
    tpot = np.array([r["tpot_s"] for r in rs])
    js = [r["forecast_js"] for r in rs if r["forecast_js"] is not None]
    cold = [r["ttft_s"] for r in rs if r["index"] in burst_starts]
    warm = [r["ttft_s"] for r in rs if r["index"] not in burst_starts]
    resident = [s + f for _, s, f, _ in run["timeline"]]
    return {
        "cost": float(np.mean([r["cost"] for r in rs])),
        "ttft_p50": float(np.median(ttft)),
        "ttft_p99": float(np.percentile(ttft, 99)),
        "tpot_p50": float(np.median(tpot)),
        "n": len(rs),
        "gateway_p50": float(np.median([r.get("predict_s", 0.0) + r.get("plan_s", 0.0) for r in rs])),
        "slo": float(np.mean((ttft <= slo_ttft) & (tpot <= slo_tpot))),
        "hit_rate": run["hit_rate"],
        "js": float(np.mean(js)) if js else None,
        "cold_ttft": float(np.mean(cold)) if cold and burst_starts else None,
        "warm_ttft": float(np.mean(warm)) if warm and burst_starts else None,
        "resident_mb_mean": float(np.mean(resident)) / 1e6 if resident else None,
        "cold_starts": run["cold_starts"],
        "cold_fallbacks": run.get("cold_fallbacks"),  # absent in results from before the fallback existed
        "function_s": float(np.mean([r["function_s"] for r in rs])),
        "function_calls": float(np.mean([r.get("function_calls", 0.0) for r in rs])),
        # None in results from before the bill was the handlers' time (function_s was then the round trips)
        "function_round_trip_s": _mean_or_none([r.get("function_round_trip_s") for r in rs]),
        "warm_mean": float(np.mean([w for *_, w in run["timeline"]])) if run["timeline"] else None,
        "function_gb_mean": float(np.mean([f for _, _, f, _ in run["timeline"]])) / 2**30 if run["timeline"] else None,
        "held_cost": run.get("held_cost"),  # absent in results from before memory was sampled
        "held_gb": _held_gb(run.get("resident")),
        "held_rss_cost": run.get("held_rss_cost"),
        "rss_gb": _held_gb(run.get("resident"), "rss_gb_s"),
        "held_basis": (run.get("resident") or {}).get("basis", "RSS sum"),  # before frames were read: RSS summed
        "modelled": any(r["modelled"] for r in rs),
    }


def functions_table(paper: dict[str, dict]) -> list[str]:
    """Markdown lines: what the systems that ran functions did with them on the paper workload (summaries by
    system), or nothing when none did."""
    rows = [(system, s) for system in ORDER if (s := paper.get(system)) and s["function_s"] > 0]
    if not rows:
        return []
    lines = [
        "Functions on the paper workload (per request: what the backbone billed to it, the functions' own time on "
        "its batches, and beside it those batches' round trips as the backbone saw them; warm instances and the "
        "expert GiB they hosted: the mean of the samples taken while it ran):",
        "",
        "| system | function cold starts | batches computed while a function started | function instances warm "
        "(mean) | expert GiB in functions (mean) | function s billed per request | round trip s per request | "
        "function calls per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, s in rows:
        lines.append(
            f"| {system} | {s['cold_starts']} | {_fmt(s['cold_fallbacks'], 'd')} | {_fmt(s['warm_mean'], '.1f')} | "
            f"{_fmt(s['function_gb_mean'], '.2f')} | {s['function_s']:.2f} | "
            f"{_fmt(s['function_round_trip_s'], '.2f')} | {s['function_calls']:.1f} |"
        )
    if any(s["function_round_trip_s"] is None for _, s in rows):
        lines += ["", "A `-` round trip: a run from before the bill was the handlers' time; it billed the round trips."]
    return lines + [""]


def _mean_or_none(values: list[float | None]) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _held_gb(resident: dict | None, key: str = "gb_s") -> dict[str, tuple[float, float]] | None:
    """role -> mean (anonymous, file-backed) GB held over the run (`key`: gb_s held, rss_gb_s the RSS sum)."""
    if not resident or not resident["seconds"] or not resident.get(key):
        return None
    return {role: (a / resident["seconds"], f / resident["seconds"]) for role, (a, f) in resident[key].items()}


def _cost_and_ratio(cost: float | None, remoe: float | None) -> tuple[str, str]:
    if cost is None or not remoe:
        return "-", "-"
    return f"{cost:.3g}", f"{cost / remoe:.2f}x"


def _basis_note(paper: dict[str, dict]) -> str:
    if any(s["held_basis"] != "RSS sum" for s in paper.values() if s["held_gb"]):
        return (
            "*Held* counts each physical page once (frame numbers from /proc/PID/pagemap): the runtime template's "
            "pages its forked function instances share copy-on-write, and the shared libraries every process maps, "
            "count once, as this machine holds them. *RSS sum* counts such a page once per process: closer to "
            "separate containers, one per process, each importing its own runtime."
        )
    return "This run summed RSS (a page shared by several processes counted once per process)."


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _latency_note(model: dict) -> str:
    if model.get("latency_at") == "client":
        return (
            "TTFT and TPOT as the SDK client saw them: from the call to the first token, the gateway's predict and "
            "plan included (their time is the gateway column); CPU's as LocalEngine's caller saw them."
        )
    return (
        "TTFT and TPOT as the backbone timed them (a run from before client-side timing): the gateway's predict "
        "and plan, which come before the backbone's clock starts, are left out."
    )


def tables(model: dict) -> dict[str, dict[str, dict]]:
    """workload -> system -> summary."""
    out: dict[str, dict[str, dict]] = {}
    for run in model["runs"]:
        starts = model["burst_starts"] if run["workload"] == "bursty" else []
        out.setdefault(run["workload"], {})[run["system"]] = summary(
            run, model["slo_ttft_s"], model["slo_tpot_s"], starts
        )
    return out


QUANTIZED_ORDER = ["CPU", "MIX", "Remoe", "Remoe-oracle"]


def _held_total(s: dict) -> str:
    return "-" if not s["held_gb"] else f"{sum(a + f for a, f in s['held_gb'].values()):.2f}"


def _quantized_when(q: dict) -> str:
    """Whether the quantized runs shared the exact runs' run (`--expert-dtype`) or came later (`--quantized-only`)."""
    run = q.get("separate_run")
    if run is None:
        return "measured in the same run as the table above"
    return (
        f"measured in a separate run ({run['machine']}, {run['date']}, commit {run['commit']}) beside the exact "
        "rows of the table above: the machine's load differs between the two runs"
    )


def quantized_table(model: dict, paper: dict[str, dict]) -> list[str]:
    """The paper workload with the experts quantized, beside the same systems with exact experts (same SLO)."""
    q = model["quantized"]
    fmt = q["expert_dtype"] + (f" (group {q['group_size']})" if q.get("group_size") else "")
    qsum = {
        run["system"]: summary(run, model["slo_ttft_s"], model["slo_tpot_s"], [])
        for run in q["runs"]
        if run["workload"] == "paper"
    }
    exact_mb = model["shape"]["expert_bytes"] * model["shape"]["layers"] * model["shape"]["experts"] / 2**20
    quant_mb = q["shape"]["expert_bytes"] * q["shape"]["layers"] * q["shape"]["experts"] / 2**20
    lines = [
        f"### Paper workload with {fmt} experts, same SLO",
        "",
        f"The same requests served from `remoe split --expert-dtype {q['expert_dtype']}` of this checkpoint (routed "
        f"experts {quant_mb:.0f} MiB instead of {exact_mb:.0f} MiB; the backbone unchanged), {_quantized_when(q)}. "
        "GPU keeps the checkpoint's experts on its device, Fetch is modelled: both left "
        "out. Quantized experts change the tokens (docs/results/quantization.md has the quality cost).",
        "",
        "| system | experts | $ per request, billed | $ per request, held | held vs exact | TTFT p50 (ms) | "
        "TPOT p50 (ms) | SLO met | GB held (all processes, mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system in QUANTIZED_ORDER:
        if system not in qsum:
            continue
        for label, s in (("exact", paper[system]), (q["expert_dtype"], qsum[system])):
            exact_held = paper[system]["held_cost"]
            ratio = f"{s['held_cost'] / exact_held:.2f}x" if s["held_cost"] is not None and exact_held else "-"
            lines.append(
                f"| {system} | {label} | {s['cost']:.3g} | {_fmt(s['held_cost'], '.3g')} | {ratio} | "
                f"{s['ttft_p50'] * 1e3:.1f} | {s['tpot_p50'] * 1e3:.2f} | {s['slo']:.0%} | {_held_total(s)} |"
            )
    return [*lines, ""]


def write(results: dict, out: Path, stem: str) -> None:
    sampling = out / "profile_sampling.json"  # how far off a profile's sample is here: bench/profile_sampling.py
    sampled = json.loads(sampling.read_text()) if sampling.is_file() else None
    lines = [
        "# Evaluation: CPU, GPU, MIX, Fetch, Remoe and Remoe with an oracle forecast, side by side",
        "",
        f"Machine: {results['machine']}. Date: {results['date']}. Commit: {results['commit']}. "
        f"Prices: CPU ${results['prices']['cpu_gb_s']:.3g} per GB-s, GPU ${results['prices']['gpu_gb_s']:.3g} "
        f"per GB-s (AWS Lambda x86, Cloud Run L4). SLO per model: {results['slo_slack']}x MIX's median TTFT and "
        "TPOT, measured in the same run. Every system runs on this machine in the same run, one after another.",
        "",
        "| system | how it runs |",
        "|---|---|",
        *[f"| {s} | {HOW[s]} |" for s in ORDER],
        "",
    ]
    for name, model in results["models"].items():
        t = tables(model)
        plan = model["plan"]
        provenance = ""
        if model.get("commit", results["commit"]) != results["commit"] or model.get("machine") != results["machine"]:
            # a model kept from an earlier run: its own machine, date and commit, not the header's
            provenance = f" Measured {model['date']} at commit {model['commit']} on {model.get('machine', '?')}."
        paper = t["paper"]
        n = paper["Remoe"]["n"]
        tail = "TTFT p99 (ms)" if n >= 100 else f"TTFT max of {n} (ms)"  # a p99 of fewer is their maximum
        lines += [
            f"## {model['model']}",
            "",
            f"{model['note']}. SLO: TTFT {model['slo_ttft_s'] * 1e3:.1f} ms, TPOT {model['slo_tpot_s'] * 1e3:.2f} ms."
            + provenance,
            "",
            _latency_note(model),
            "",
            f"### Paper workload: {plan['requests']} corpus prompts (first 500 characters), {plan['new_tokens']} "
            "output tokens, batch 1",
            "",
            "Costs per request: *billed* is what the plan's sizes bill (Remoe: the metering ledger) or, for CPU, "
            "GPU and MIX, busy time x the main memory of the scheduler's model; *held* is the memory every "
            "process of the system held while the workload ran (sampled from /proc, anonymous + file-backed), "
            "the backbone process at the GPU's price and the rest at the CPU's, over the workload's requests. "
            f"{_basis_note(paper)}",
            "",
            "| system | $ per request, billed | vs Remoe | $ per request, held | vs Remoe | held, RSS sum | vs Remoe "
            f"| TTFT p50 (ms) | {tail} | TPOT p50 (ms) | SLO met | gateway predict + plan p50 (ms) | "
            "expert cache hits | forecast JS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        remoe = paper["Remoe"]["cost"]
        remoe_held = paper["Remoe"]["held_cost"]
        remoe_rss = paper["Remoe"]["held_rss_cost"]
        client = model.get("latency_at") == "client"
        for system in ORDER:
            s = paper[system]
            gateway = f"{s['gateway_p50'] * 1e3:.2f}" if client and system not in ("CPU", "Fetch") else "-"
            held, held_ratio = _cost_and_ratio(s["held_cost"], remoe_held)
            rss, rss_ratio = _cost_and_ratio(s["held_rss_cost"], remoe_rss)
            lines.append(
                f"| {system}{' (modelled)' if s['modelled'] else ''} | {s['cost']:.3g} | {s['cost'] / remoe:.2f}x | "
                f"{held} | {held_ratio} | {rss} | {rss_ratio} | {s['ttft_p50'] * 1e3:.1f} | "
                f"{s['ttft_p99'] * 1e3:.1f} | "
                f"{s['tpot_p50'] * 1e3:.2f} | {s['slo']:.0%} | {gateway} | {_fmt(s['hit_rate'], '.1%')} | "
                f"{_fmt(s['js'], '.3f')} |"
            )
        where = [(system, paper[system]["held_gb"]) for system in ORDER if paper[system]["held_gb"]]
        if where:
            lines += [
                "",
                "Memory held on the paper workload, mean GB (anonymous + file-backed) per process, and in brackets "
                "the same processes' RSS:",
                "",
            ]
            for system, roles in where:
                rss = paper[system]["rss_gb"] or {}
                parts = ", ".join(
                    f"{role} {a:.2f} + {f:.2f}" + (f" ({rss[role][0]:.2f} + {rss[role][1]:.2f})" if role in rss else "")
                    for role, (a, f) in sorted(roles.items())
                )
                lines.append(f"- {system}: {parts}")
        lines.append("")
        lines += functions_table(paper)
        sampling = model_check.sampling_note(model["profile"]["samples"], sampled)
        lines += model_check.table(model_check.checks(model["runs"], ORDER), sampling)
        lines += model_check.parts_table(model_check.ledger_parts(model["runs"], ORDER))
        lines += price_table.table(model["runs"], ORDER)
        if model.get("quantized"):
            lines += quantized_table(model, paper)
        sweep = {w: v for w, v in t.items() if w.startswith("sweep-")}
        if sweep:
            lines += [
                "### Prefill/decode ratio sweep: $ per request (TTFT ms)",
                "",
                "| prompt chars, output tokens | " + " | ".join(ORDER) + " |",
                "|---|" + "---|" * len(ORDER),
            ]
            for w, rows in sweep.items():
                chars, tokens = w.removeprefix("sweep-").split("-")
                cells = [f"{rows[s]['cost']:.3g} ({rows[s]['ttft_p50'] * 1e3:.0f})" for s in ORDER]
                lines.append(f"| {chars.removesuffix('c')}, {tokens.removesuffix('t')} | " + " | ".join(cells) + " |")
            lines.append("")
        if "bursty" in t:
            b = t["bursty"]
            lines += [
                f"### Bursty trace: {plan['bursts']} Poisson bursts, idle gaps of {model['idle_gap_s']:.0f} s "
                f"(function TTL {plan['function_ttl_s']:.0f} s), {plan['burst_tokens']} output tokens",
                "",
                "| system | TTFT, first of a burst (ms) | TTFT, the rest (ms) | function cold starts | "
                "batches computed while a function started | expert MB resident (mean) | $ per request |",
                "|---|---|---|---|---|---|---|",
            ]
            for system in ORDER:
                s = b[system]
                lines.append(
                    f"| {system} | {_fmt(s['cold_ttft'] and s['cold_ttft'] * 1e3, '.1f')} | "
                    f"{_fmt(s['warm_ttft'] and s['warm_ttft'] * 1e3, '.1f')} | {s['cold_starts']} | "
                    f"{_fmt(s['cold_fallbacks'], 'd')} | "
                    f"{_fmt(s['resident_mb_mean'], '.1f')} | {s['cost']:.3g} |"
                )
            lines.append("")
        lines += [f"![{name}]({stem}-{name}.png)", ""]
        plot(name, model, t, out / f"{stem}-{name}.png")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def plot(name: str, model: dict, t: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bursty = next((r for r in model["runs"] if r["workload"] == "bursty" and r["system"] == "Remoe"), None)
    panels = 3 if bursty else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.4))
    paper = t["paper"]
    costs = [paper[s]["cost"] * 1e6 for s in ORDER]
    bars = axes[0].bar(ORDER, costs, color=[COLORS[s] for s in ORDER])
    for bar, s in zip(bars, ORDER, strict=True):
        if paper[s]["slo"] < 1:
            bar.set_hatch("//")
    axes[0].set(ylabel="$ per million requests", title="cost (hatched: SLO missed on some)")
    axes[0].tick_params(axis="x", rotation=45, labelsize=7)
    x = np.arange(len(ORDER))
    axes[1].bar(x - 0.2, [paper[s]["ttft_p50"] * 1e3 for s in ORDER], 0.4, label="TTFT p50", color="#48c")
    axes[1].bar(x + 0.2, [paper[s]["tpot_p50"] * 1e3 for s in ORDER], 0.4, label="TPOT p50", color="#d62")
    axes[1].axhline(model["slo_ttft_s"] * 1e3, color="#48c", ls="--", lw=1)
    axes[1].axhline(model["slo_tpot_s"] * 1e3, color="#d62", ls="--", lw=1)
    axes[1].set_xticks(x, ORDER, rotation=45, fontsize=7)
    axes[1].set(ylabel="ms", title="latency (dashed: SLO)", yscale="log")
    axes[1].legend(fontsize=7)
    if bursty:
        mix = next(r for r in model["runs"] if r["workload"] == "bursty" and r["system"] == "MIX")
        for run, color in ((mix, COLORS["MIX"]), (bursty, COLORS["Remoe"])):
            ts = [p[0] for p in run["timeline"]]
            axes[2].plot(ts, [p[1] / 1e6 for p in run["timeline"]], color=color, label=f"{run['system']} services")
            if run is bursty:
                axes[2].plot(ts, [p[2] / 1e6 for p in run["timeline"]], color=color, ls="--", label="Remoe functions")
        axes[2].set(xlabel="s", ylabel="expert MB resident", title="bursty trace: weights held")
        axes[2].legend(fontsize=7)
    fig.suptitle(model["model"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
