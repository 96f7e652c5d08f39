"""A machine's measured speeds for the scheduler (`remoe profile`'s JSON): the report, reading and writing it,
and the fit of remote time against memory, T(y) = th1 exp(-th2 y) + th3."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from remoe.scheduler.problem import Profile


@dataclass
class ProfileReport:
    model: str
    machine: str
    date: str
    profile: Profile
    samples: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "machine": self.machine,
            "date": self.date,
            "profile": {f.name: getattr(self.profile, f.name) for f in fields(Profile)},
            "samples": self.samples,
            "notes": self.notes,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def write_profile(profile: Profile, path: str | Path) -> None:
    """A profile file with just the speeds (what `load_profile` reads), e.g. one written by hand."""
    Path(path).write_text(json.dumps({"profile": {f.name: getattr(profile, f.name) for f in fields(Profile)}}) + "\n")


# A profile from before the one-device systems were measured on their own: the speeds they were priced at.
FALLBACKS = {
    "cpu_expert_s_per_token": "local_expert_s_per_token",
    "gpu_backbone_prefill_s_per_token": "backbone_prefill_s_per_token",
    "gpu_backbone_decode_s": "backbone_decode_s",
    "gpu_backbone_decode_s_per_context_token": "backbone_decode_s_per_context_token",
}


def load_profile(path: str | Path) -> Profile:
    """The Profile of a `remoe profile` JSON file; unknown keys are refused, missing ones keep defaults."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())["profile"]
    except FileNotFoundError:
        raise ValueError(f"profile {path} not found (make one with `remoe profile --model DIR --out {path}`)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"profile {path}: not a `remoe profile` JSON file ({e})") from None
    known = {f.name for f in fields(Profile)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"profile {path}: unknown fields {sorted(unknown)}")
    if "remote_fit" in raw:
        raw["remote_fit"] = tuple(raw["remote_fit"])
    for new, old in FALLBACKS.items():
        if new not in raw and old in raw:
            raw[new] = raw[old]
    return Profile(**raw)


def fit_remote(memory_gb: list[float], seconds: list[float]) -> tuple[float, float, float]:
    """Least-squares T(y) = th1 exp(-th2 y) + th3 with every parameter >= 0."""
    from scipy.optimize import OptimizeWarning, curve_fit

    y, t = np.asarray(memory_gb, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    if len(y) < 3:
        raise ValueError("need at least 3 memory sizes to fit T(y)")
    floor = float(t.min())
    start = (max(float(t.max() - floor), 1e-9) * float(np.exp(y.min())), 1.0, max(floor, 0.0))

    def model(y, th1, th2, th3):
        return th1 * np.exp(-th2 * y) + th3

    try:
        with warnings.catch_warnings():  # 3-4 points for 3 parameters: no covariance, which is not used
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(model, y, t, p0=start, bounds=([0, 0, 0], [np.inf, 50.0, np.inf]), maxfev=20000)
    except RuntimeError:  # no convergence: a flat line at the mean is the honest fit
        return (0.0, 1.0, float(t.mean()))
    return tuple(float(p) for p in params)
