"""Memory actually held by a system while it serves: every process it runs, sampled from /proc and integrated
over time, split into anonymous and file-backed pages (a mapped safetensors file is the latter).

A plan's billing counts what the plan sized; this counts what the processes held, whatever served the request
(an expert service computing a function's batch while the function starts, the predictor's embedding model, the
runtime template a platform would not bill but this machine holds). Each service's children (the backbone's
function processes and their template) are counted under `<service>/children`.

*Held* counts each physical page once (page_frames.py): a function instance forked from the runtime template
shares most of the template's pages copy-on-write, and every process maps the same shared libraries, so the sum
of RSS counts those pages once per process. The RSS sum is kept beside it: it is closer to what separate
containers, one per process, would each hold. Frame numbers are read every `pages_period_s` (a read costs about
0.05 s per GB held here); between reads each process's RSS is corrected by its own last overcount, so a process that
started since the last read counts its whole RSS until the next.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.evaluation import page_frames

_PROC = Path("/proc")
_KB = 1024


HELD_ONCE = "each page once"  # HeldMemory.basis: physical pages, a page shared by processes counted once
RSS_SUM = "RSS sum"  # frame numbers unreadable (not root): held is the sum of the processes' RSS


@dataclass
class HeldMemory:
    """GB-seconds held per role: (anonymous, file-backed), and the largest GB held at one sample; `rss_gb_s` the
    same integral of the processes' summed RSS."""

    gb_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    peak_gb: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    rss_gb_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    basis: str = HELD_ONCE

    def total_gb_s(self, role: str) -> float:
        anon, backed = self.gb_s.get(role, (0.0, 0.0))
        return anon + backed

    def as_rss_sum(self) -> HeldMemory:
        """The same run billed by summed RSS."""
        return HeldMemory(self.rss_gb_s or self.gb_s, self.peak_gb, self.seconds, self.rss_gb_s or self.gb_s, RSS_SUM)

    def cost(self, gpu_roles: set[str], cpu_gb_s: float, gpu_gb_s: float) -> float:
        """Every role's GB-seconds at its memory's price: `gpu_roles` at the GPU's, the rest at the CPU's."""
        return sum(self.total_gb_s(r) * (gpu_gb_s if r in gpu_roles else cpu_gb_s) for r in self.gb_s)


def _rss(pid: int) -> tuple[int, int] | None:
    """(anonymous, file-backed) resident bytes of a process; None when it is gone."""
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            values[key] = int(rest.split()[0]) * _KB
    return values.get("RssAnon", 0), values.get("RssFile", 0) + values.get("RssShmem", 0)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # the field after the state, past the command's parentheses
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _integral(samples: list[tuple[float, dict[str, tuple[int, int]]]], role: str) -> tuple[float, float]:
    """Trapezoidal GB-seconds of one role's (anonymous, file-backed) bytes."""
    anon = backed = 0.0
    for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False):
        a0, f0 = a.get(role, (0, 0))
        a1, f1 = b.get(role, (0, 0))
        anon += (t1 - t0) * (a0 + a1) / 2 / 1e9
        backed += (t1 - t0) * (f0 + f1) / 2 / 1e9
    return anon, backed


class ResidentSampler(threading.Thread):
    """Samples `roots` (role -> pid) and their descendants every `period_s` until stopped; frame numbers every
    `pages_period_s` (and at the first and last sample)."""

    def __init__(self, roots: dict[str, int], period_s: float = 0.5, pages_period_s: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.roots, self.period_s, self.pages_period_s = roots, period_s, pages_period_s
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []  # held
        self.rss_samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.t0 = time.monotonic()
        self.pages = page_frames.readable()
        self.overcount: dict[int, tuple[int, int]] = {}  # pid -> RSS minus its pages held once, at the last read
        self.next_pages_t = 0.0

    def sample(self, t: float, pages: bool = False) -> None:
        children = _children()
        groups = {}
        for role, pid in self.roots.items():
            groups[role] = [pid]
            groups[f"{role}/children"] = sorted(_descendants(pid, children))  # the template starts first
        rss = {p: r for pids in groups.values() for p in pids if (r := _rss(p)) is not None}
        if self.pages and (pages or t >= self.next_pages_t):
            once = page_frames.held_once([p for pids in groups.values() for p in pids if p in rss])
            self.overcount = {
                p: (max(0, rss[p][0] - a), max(0, rss[p][1] - f)) for p, (a, f) in once.items() if p in rss
            }
            self.next_pages_t = t + self.pages_period_s
        held: dict[str, tuple[int, int]] = {}
        summed: dict[str, tuple[int, int]] = {}
        for name, pids in groups.items():
            live = [p for p in pids if p in rss]
            if not live:
                continue
            summed[name] = (sum(rss[p][0] for p in live), sum(rss[p][1] for p in live))
            over = [self.overcount.get(p, (0, 0)) for p in live]
            held[name] = (
                sum(max(0, rss[p][0] - o[0]) for p, o in zip(live, over, strict=True)),
                sum(max(0, rss[p][1] - o[1]) for p, o in zip(live, over, strict=True)),
            )
        self.samples.append((t, {k: v for k, v in held.items() if any(v)}))
        self.rss_samples.append((t, {k: v for k, v in summed.items() if any(v)}))

    def begin(self) -> ResidentSampler:
        """A first sample now, then one every period in the background."""
        self.t0 = time.monotonic()
        self.sample(0.0, pages=True)
        self.start()
        return self

    def run(self) -> None:
        while not self.stop_event.wait(self.period_s):
            self.sample(time.monotonic() - self.t0)

    def finish(self) -> HeldMemory:
        """The last sample now (a run shorter than a period is still covered to its end), then the integral."""
        self.stop_event.set()
        if self.is_alive():
            self.join()
        self.sample(time.monotonic() - self.t0, pages=True)
        out = HeldMemory(
            seconds=self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0,
            basis=HELD_ONCE if self.pages else RSS_SUM,
        )
        for role in sorted({r for _, held in self.rss_samples for r in held}):
            out.gb_s[role] = _integral(self.samples, role)
            out.rss_gb_s[role] = _integral(self.rss_samples, role)
            out.peak_gb[role] = max(sum(held.get(role, (0, 0))) for _, held in self.samples) / 1e9
        return out
