"""The cost model against measurement: what the scheduler's model predicts a request costs, from the profile
alone, beside what the same run measured.

- CPU, GPU, MIX: the model's cost (`remoe.scheduler.baselines`), its memory x its predicted busy time, for each
  request's own prompt and output lengths. Their cost is independent of the routing forecast (the expected
  expert tokens of a layer sum to n_in x top_k whichever experts they go to), so none is needed.
- Remoe, Remoe-oracle: the plan's predicted cost as the gateway recorded it in the metering ledger (the forecast
  the plan was made from included; Remoe-oracle's is the request's own activation).

Against two measurements: *billed* (the same memory x the busy time the client measured, or the ledger's bill
for Remoe) isolates the model's time; *held* (the memory every process held x time) is what the run cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remoe.scheduler.baselines import SYSTEMS as MODELLED
from remoe.scheduler.estimate import Tokens
from remoe.scheduler.problem import Limits, Prices, Profile
from remoe.scheduler.shape import ModelShape

BY_FORMULA = ("CPU", "GPU", "MIX")  # predicted here from the profile
FROM_LEDGER = ("Remoe", "Remoe-oracle")  # predicted by the plan, recorded per request
TOLERANCE = 0.15  # the bar: predicted within 15% of measured


@dataclass(frozen=True, slots=True)
class CostCheck:
    system: str
    requests: int
    predicted: float  # $ per request, mean
    billed: float  # $ per request, mean, measured time
    held: float | None  # $ per request, memory held x time

    @property
    def vs_billed(self) -> float:
        return self.predicted / self.billed - 1

    @property
    def vs_held(self) -> float | None:
        return None if not self.held else self.predicted / self.held - 1


def predict(shape: ModelShape, profile: Profile, prices: Prices, system: str, n_in: int, n_out: int) -> float:
    """The model's $ for one request of a system priced by formula."""
    request = shape.request(None, n_in, n_out)
    return MODELLED[system](request, profile, prices, Limits(), Tokens.of(request)).cost


def add_predictions(runs: list[dict], shape: ModelShape, profile: Profile, prices: Prices) -> None:
    """Set `predicted_cost` on every result of the systems priced by formula (in place)."""
    for run in runs:
        if run["system"] in BY_FORMULA:
            for r in run["results"]:
                r["predicted_cost"] = predict(shape, profile, prices, run["system"], r["n_in"], r["n_out"])


def checks(runs: list[dict], order: list[str], workload: str = "paper") -> list[CostCheck]:
    """One row per system whose every request on `workload` carries a prediction, in `order`."""
    out = []
    for run in runs:
        rs = run["results"]
        if run["workload"] != workload or not rs or any(r.get("predicted_cost") is None for r in rs):
            continue
        if run["system"] in FROM_LEDGER and not any(r["predicted_cost"] for r in rs):
            continue  # a run from before the ledger's prediction was kept
        out.append(
            CostCheck(
                run["system"],
                len(rs),
                float(np.mean([r["predicted_cost"] for r in rs])),
                float(np.mean([r["cost"] for r in rs])),
                run.get("held_cost"),
            )
        )
    return sorted(out, key=lambda c: order.index(c.system) if c.system in order else len(order))


@dataclass(frozen=True, slots=True)
class LedgerParts:
    """A planned system's prediction and bill in the ledger's two parts, means per request: where a gap is."""

    system: str
    main_predicted: float  # $: the plan's main memory x its predicted busy time
    main_billed: float  # $: the same memory x the busy time measured
    main_predicted_s: float  # the busy seconds the prediction implies (same memory and prices as the bill)
    main_s: float
    functions_predicted: float  # $
    functions_billed: float  # $
    ttft_planned_s: float  # worst case at the plan's confidence
    ttft_s: float  # the backbone's, measured
    tpot_planned_s: float
    tpot_s: float
    function_mb_planned: float | None = None  # the plan's remote layers' size, mean over requests and layers
    function_mb_billed: float | None = None  # the billed functions' size, weighted by their billed seconds


def function_sizes(rs: list[dict]) -> tuple[float | None, float | None]:
    """(planned, billed) function MB over requests: the plans' remote layers' mean size and the billed functions'
    size weighted by their seconds; each None where nothing says it (no remote layer, no function billed, or a
    run from before the ledger kept sizes)."""
    planned = [mb for r in rs for mb in r.get("planned_function_mb") or []]
    seconds = sum(r.get("function_s", 0.0) for r in rs)
    billed = [r.get("function_mb_s") for r in rs]
    billed_mb = sum(billed) / seconds if seconds and None not in billed else None
    return (mean(planned) if planned else None), billed_mb


def ledger_parts(runs: list[dict], order: list[str], workload: str = "paper") -> list[LedgerParts]:
    """One row per planned system whose every request on `workload` kept the ledger's parts, in `order`."""
    out = []
    for run in runs:
        rs = run["results"]
        if run["system"] not in FROM_LEDGER or run["workload"] != workload or not rs:
            continue
        if any(r.get("cost_main") is None or not r.get("predicted_cost") for r in rs):
            continue  # a run from before the ledger kept its parts
        out.append(
            LedgerParts(
                run["system"],
                mean(r["predicted_cost_main"] for r in rs),
                mean(r["cost_main"] for r in rs),
                # billed at main_s for cost_main, so the prediction's seconds are in the same proportion
                mean(r["predicted_cost_main"] / r["cost_main"] * r["main_s"] if r["cost_main"] else 0.0 for r in rs),
                mean(r["main_s"] for r in rs),
                mean(r["predicted_cost"] - r["predicted_cost_main"] for r in rs),
                mean(r["cost"] - r["cost_main"] for r in rs),
                mean(r["predicted_ttft_s"] for r in rs),
                mean(r["backbone_ttft_s"] for r in rs),
                mean(r["predicted_tpot_s"] for r in rs),
                mean(r["backbone_tpot_s"] for r in rs),
                *function_sizes(rs),
            )
        )
    return sorted(out, key=lambda c: order.index(c.system) if c.system in order else len(order))


def mean(values) -> float:
    return float(np.mean(list(values)))


def _gap(predicted: float, measured: float) -> str:
    return f"{predicted / measured - 1:+.0%}" if measured else "-"


def format_mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def parts_table(rows: list[LedgerParts]) -> list[str]:
    """Markdown lines: the planned systems' gap split into the main model's and the functions' (none without)."""
    if not rows:
        return []
    lines = [
        "Where the planned systems' gap is, means per request (the ledger keeps the plan's prediction and the bill "
        "in the same two parts; TTFT and TPOT are the backbone's, without the gateway's predict and plan; the "
        "plan's TTFT is its worst case at the forecast's confidence, its cost the expected case):",
        "",
        "| system | main model $, modelled | billed | vs billed | main busy s, modelled | measured | functions $, "
        "modelled | billed | vs billed | function MB, planned | billed | TTFT ms, planned | measured | TPOT ms, "
        "planned | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in rows:
        lines.append(
            f"| {p.system} | {p.main_predicted:.3g} | {p.main_billed:.3g} | {_gap(p.main_predicted, p.main_billed)} "
            f"| {p.main_predicted_s:.2f} | {p.main_s:.2f} | {p.functions_predicted:.3g} | {p.functions_billed:.3g} "
            f"| {_gap(p.functions_predicted, p.functions_billed)} | {format_mb(p.function_mb_planned)} | "
            f"{format_mb(p.function_mb_billed)} | {p.ttft_planned_s * 1e3:.1f} | "
            f"{p.ttft_s * 1e3:.1f} | {p.tpot_planned_s * 1e3:.2f} | {p.tpot_s * 1e3:.2f} |"
        )
    return lines + [""]


QUICK_REPEATS = 2  # requests per prompt length of a quick profile from before the rows kept their count


def decode_timed_s(profile_samples: dict) -> float:
    """Decode seconds the profile timed in its main configuration (every expert on the expert services)."""
    steps = max(profile_samples["decode_new_tokens"] - 1, 0)
    rows = profile_samples["end_to_end"].values()
    return sum(row.get("requests", QUICK_REPEATS) * row["tpot_s"] * steps for row in rows)


def sampling_note(profile_samples: dict, sampling: dict | None) -> str:
    """How long the profile the model predicts from timed decode, and how far off a sample that long, and another
    cluster, were on this machine (`sampling`: bench/profile_sampling.py's JSON; None where it has not run)."""
    timed = decode_timed_s(profile_samples)
    what = f"The profile timed {timed:.2g} s of decode in its main configuration (every expert on the services)"
    spreads = (sampling or {}).get("spreads") or []
    if not spreads:
        return what + "."
    near = [s for s in spreads if s["window_s"] <= timed]
    spread = max(near, key=lambda s: s["window_s"]) if near else min(spreads, key=lambda s: s["window_s"])
    even = "" if near else "even "  # the profile's sample was shorter still, so noisier
    note = (
        f"{what}; on this machine {even}a {spread['window_s']:g}-s sample of the tiny model's TPOT was off its "
        f"cluster's mean by {spread['rms_error']:.0%} RMS"
    )
    between = sampling.get("between_instances") if sampling else None
    if between and between["instances"] > 1:  # each system runs on a cluster of its own, the profile on others
        note += f", and one cluster's mean off the mean of {between['instances']} by {between['rms_error']:.0%} RMS"
    return note + " (profile_sampling.md)."


def table(rows: list[CostCheck], sampling: str = "") -> list[str]:
    """Markdown lines: the check on the paper workload, or nothing when the run has no predictions."""
    if not rows:
        return []
    lines = [
        "### The cost model against measurement (paper workload)",
        "",
        "*Modelled* is the scheduler's cost model from the profile alone (CPU, GPU, MIX: `remoe.scheduler."
        "baselines` at each request's lengths; Remoe: the plan's prediction in the metering ledger). *Billed* is the "
        "same memory for the time measured (Remoe: the ledger's bill), so their gap is the model's time; *held* is "
        f"the memory every process held x time. Within {TOLERANCE:.0%} is the aim."
        + (" " + sampling if sampling else ""),
        "",
        "| system | requests | $ per request, modelled | billed | modelled vs billed | held | modelled vs held |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        held = "-" if c.held is None else f"{c.held:.3g}"
        vs_held = "-" if c.vs_held is None else f"{c.vs_held:+.0%}"
        lines.append(
            f"| {c.system} | {c.requests} | {c.predicted:.3g} | {c.billed:.3g} | {c.vs_billed:+.0%} | {held} | "
            f"{vs_held} |"
        )
    return lines + [""]
