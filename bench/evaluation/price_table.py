"""One run's measured memory priced by every published price set (remoe/scheduler/price_sets.py), and the GPU
price ratio at which Remoe would cost what another system does.

Per request, from the memory each system's processes held over the paper workload (GB-seconds per role): the
backbone process at the GPU's price (or, for a whole-GPU set, its cards for the seconds it was held), every
other process at the CPU's. With G and C a system's GPU-side and CPU-side GB-s per request, Remoe costs what
system X costs at c_g / c_c = (C_Remoe - C_X) / (G_X - G_Remoe).
"""

from __future__ import annotations

from dataclasses import dataclass

from remoe.scheduler.price_sets import PRICE_SETS, PriceSet

GPU_ROLE = "backbone"  # the process that would hold the GPU (CPU: none)


@dataclass(frozen=True, slots=True)
class HeldSplit:
    """A system's held memory per request: GPU-side and CPU-side GB-s, the seconds the backbone was held, and
    its function invocations (None: the run predates their recording)."""

    system: str
    gpu_gb_s: float
    cpu_gb_s: float
    gpu_seconds: float
    invocations: float | None = 0.0

    def cost(self, price: PriceSet) -> float:
        if price.whole_gpu_s:  # as many cards as the mean GPU-side memory held needs
            held = self.gpu_gb_s / self.gpu_seconds if self.gpu_seconds else 0.0
            gpu = price.whole_gpu_s * price.gpus(held) * self.gpu_seconds
        else:
            gpu = price.prices.gpu_gb_s * self.gpu_gb_s
        return gpu + price.prices.cpu_gb_s * self.cpu_gb_s + price.request_fee * (self.invocations or 0.0)


def split(run: dict) -> HeldSplit | None:
    """The held memory of one run per request, or None for a run without samples."""
    resident, n = run.get("resident"), len(run["results"])
    if not resident or not resident.get("seconds") or not n:
        return None
    gb_s = {role: a + f for role, (a, f) in resident["gb_s"].items()}
    on_gpu = run["system"] != "CPU" and GPU_ROLE in gb_s
    gpu = gb_s.get(GPU_ROLE, 0.0) if on_gpu else 0.0
    cpu = sum(v for role, v in gb_s.items() if not (on_gpu and role == GPU_ROLE))
    results = run["results"]
    calls = sum(r["function_calls"] for r in results) / n if all("function_calls" in r for r in results) else None
    return HeldSplit(run["system"], gpu / n, cpu / n, resident["seconds"] / n if on_gpu else 0.0, calls)


def break_even(remoe: HeldSplit, other: HeldSplit) -> str:
    """Where in c_g / c_c Remoe's held cost is below `other`'s: Remoe - other = c_g dG + c_c dC."""
    d_gpu, d_cpu = remoe.gpu_gb_s - other.gpu_gb_s, remoe.cpu_gb_s - other.cpu_gb_s
    if d_gpu < 0:  # Remoe holds less GPU memory: cheaper above the ratio
        ratio = d_cpu / -d_gpu
        return "cheaper at every ratio" if ratio <= 0 else f"cheaper above c_g / c_c = {ratio:.2f}"
    if d_cpu < 0 and d_gpu > 0:
        return f"cheaper below c_g / c_c = {-d_cpu / d_gpu:.2f}"
    return "cheaper at every ratio" if d_cpu < 0 else "dearer at every ratio"


def table(runs: list[dict], order: list[str], workload: str = "paper") -> list[str]:
    """Markdown lines: $ per request under each price set (measured memory), and the break-even ratios."""
    splits = {s.system: s for r in runs if r["workload"] == workload and (s := split(r)) is not None}
    systems = [name for name in order if name in splits]
    if "Remoe" not in splits or len(systems) < 2:
        return []
    remoe = splits["Remoe"]
    fee = (
        f"Remoe's {remoe.invocations:.1f} function invocations per request (as the backbone counted them) pay "
        "Lambda's per-request fee ($0.20 per million) where a set has it."
        if remoe.invocations is not None
        else "Not counted: Lambda's per-request fee ($0.20 per million invocations), which Remoe's functions would "
        "pay: this run predates the backbone counting invocations."
    )
    lines = [
        "### The same run under each price set (memory held, $ per request)",
        "",
        "Each system's measured memory (GB-seconds per process, as in the *held* column) priced by every set in "
        "`remoe/scheduler/price_sets.py` (sources and dates there and below). A whole-GPU set bills the backbone's "
        f"instance for the seconds it was held, whatever it held (as many cards as its mean memory needs). {fee}",
        "",
        "| price set | c_g / c_c | " + " | ".join(systems) + " | Remoe vs GPU | Remoe vs the cheapest other |",
        "|---|---|" + "---|" * (len(systems) + 2),
    ]
    for price in PRICE_SETS:
        costs = {name: splits[name].cost(price) for name in systems}
        others = {name: c for name, c in costs.items() if not name.startswith("Remoe")}
        cheapest = min(others, key=others.get) if others else None
        ratio = "whole GPU" if price.whole_gpu_s else f"{price.ratio:.2f}"
        versus = f"{costs['Remoe'] / others[cheapest]:.2f}x ({cheapest})" if cheapest else "-"
        gpu = f"{costs['Remoe'] / costs['GPU']:.2f}x" if costs.get("GPU") else "-"
        cells = " | ".join(f"{costs[n]:.3g}" for n in systems)
        lines.append(f"| {price.name} | {ratio} | {cells} | {gpu} | {versus} |")
    lines += ["", "Where Remoe's held cost is below each other system's, in c_g / c_c (per-GB pricing):", ""]
    lines += [f"- vs {name}: {break_even(splits['Remoe'], splits[name])}" for name in systems if name != "Remoe"]
    lines += ["", "Sources (read " + PRICE_SETS[0].date + "):", ""]
    lines += [f"- {p.name}: {p.source}" for p in PRICE_SETS]
    return lines + [""]
