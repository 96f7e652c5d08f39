"""Memory actually held by a system while it serves: every process it runs, sampled from /proc and integrated
over time, resident set split into anonymous and file-backed pages (a mapped safetensors file is the latter).

A plan's billing counts what the plan sized; this counts what the processes held, whatever served the request
(an expert service computing a function's batch while the function starts, the predictor's embedding model, the
runtime template a platform would not bill but this machine holds). Each service's children (the backbone's
function processes and their template) are counted under `<service>/children`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_PROC = Path("/proc")
_KB = 1024


@dataclass
class HeldMemory:
    """GB-seconds held per role: (anonymous, file-backed), and the largest resident GB seen."""

    gb_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    peak_gb: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def total_gb_s(self, role: str) -> float:
        anon, backed = self.gb_s.get(role, (0.0, 0.0))
        return anon + backed

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


class ResidentSampler(threading.Thread):
    """Samples `roots` (role -> pid) and their descendants every `period_s` until stopped."""

    def __init__(self, roots: dict[str, int], period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.roots, self.period_s = roots, period_s
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.t0 = time.monotonic()

    def sample(self, t: float) -> None:
        children = _children()
        held: dict[str, tuple[int, int]] = {}
        for role, pid in self.roots.items():
            for name, pids in ((role, [pid]), (f"{role}/children", _descendants(pid, children))):
                anon = backed = 0
                for p in pids:
                    rss = _rss(p)
                    if rss is not None:
                        anon, backed = anon + rss[0], backed + rss[1]
                if pids and (anon or backed):
                    held[name] = (anon, backed)
        self.samples.append((t, held))

    def begin(self) -> ResidentSampler:
        """A first sample now, then one every period in the background."""
        self.t0 = time.monotonic()
        self.sample(0.0)
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
        self.sample(time.monotonic() - self.t0)
        out = HeldMemory(seconds=self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0)
        roles = {r for _, held in self.samples for r in held}
        for role in sorted(roles):
            anon = backed = 0.0
            for (t0, a), (t1, b) in zip(self.samples, self.samples[1:], strict=False):
                a0, f0 = a.get(role, (0, 0))
                a1, f1 = b.get(role, (0, 0))
                anon += (t1 - t0) * (a0 + a1) / 2 / 1e9
                backed += (t1 - t0) * (f0 + f1) / 2 / 1e9
            out.gb_s[role] = (anon, backed)
            out.peak_gb[role] = max(sum(held.get(role, (0, 0))) for _, held in self.samples) / 1e9
        return out
