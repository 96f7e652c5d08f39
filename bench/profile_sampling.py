"""How long `remoe profile` must time decode for its TPOT to be the one a workload later sees, on this machine.

One `remoe up` cluster (every expert on the expert services, as the profile's main configuration) decodes the same
128-token prompt over and over for `--seconds`; the series is cut into consecutive samples of at least w seconds
of decode, and each sample's mean TPOT is set against the whole run's. Their spread is what a profile that times
w seconds per configuration is off by, here, from the machine alone: the cost model can be no closer than that.

Usage: python -m bench.profile_sampling [--model DIR] [--seconds 240] [--out docs/results]
Writes docs/results/profile_sampling.md and .json (measured).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from remoe.constants import DECODE_SAMPLE_S
from remoe.machine import machine_description, source_commit

WINDOWS_S = (1.0, 3.0, 10.0, 30.0)
NEW_TOKENS = 32  # per request: a sample is several requests, each a short decode as the profile's are


@dataclass(frozen=True, slots=True)
class Spread:
    window_s: float  # decode seconds per sample, at least
    samples: int
    rms_error: float  # of a sample's mean TPOT against the whole run's, relative
    max_error: float


def spreads(tpots: list[float], new_tokens: int, windows: tuple[float, ...] = WINDOWS_S) -> list[Spread]:
    """Each window's spread over consecutive samples of `tpots` (one per request, in order); a window with fewer
    than two samples in the run is left out."""
    overall = float(np.mean(tpots))
    out = []
    for w in windows:
        means, chunk, decode = [], [], 0.0
        for t in tpots:
            chunk.append(t)
            decode += t * (new_tokens - 1)
            if decode >= w:
                means.append(float(np.mean(chunk)))
                chunk, decode = [], 0.0
        if len(means) < 2:
            continue
        errors = np.array(means) / overall - 1
        out.append(Spread(w, len(means), float(np.sqrt(np.mean(errors**2))), float(np.max(np.abs(errors)))))
    return out


def measure(model: Path, seconds: float) -> list[float]:
    """Client TPOT of one request after another, for `seconds`."""
    from remoe.cluster import LocalCluster
    from remoe.sdk import Client

    ids = [int(i) for i in np.random.default_rng(128).integers(3, 200, size=128)]
    with LocalCluster(model, port=0, predictor=False) as cluster, Client(cluster.address) as client:
        for _ in range(2):  # warm-up: every code path run
            client.generate(token_ids=ids, max_new_tokens=4, ignore_eos=True)
        tpots, start = [], time.monotonic()
        while time.monotonic() - start < seconds:
            tpots.append(client.generate(token_ids=ids, max_new_tokens=NEW_TOKENS, ignore_eos=True).client_tpot_s)
    return tpots


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_sampling", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: the evaluation's trained tiny model)")
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to decode (default 240)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    if not args.seconds > 0:
        parser.error("--seconds must be > 0")
    if args.model is None:
        from bench.evaluation import models

        args.model = models.tiny(minutes=8).path
    tpots = measure(args.model, args.seconds)
    rows = spreads(tpots, NEW_TOKENS)
    provenance = {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {**provenance, "model": str(args.model), "new_tokens": NEW_TOKENS, "tpot_s": tpots}
    payload["spreads"] = [asdict(r) for r in rows]
    (args.out / "profile_sampling.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# How long a profile must time decode (measured)",
        "",
        f"{provenance['machine']}; {provenance['date']}; commit {provenance['commit']}. "
        f"`python -m bench.profile_sampling --seconds {args.seconds:g}`.",
        "",
        f"One `remoe up` cluster of `{args.model.name}` (every expert on the expert services, no predictor) "
        f"decoded a 128-token prompt {NEW_TOKENS} tokens at a time, {len(tpots)} requests over {args.seconds:g} s "
        f"(mean TPOT {np.mean(tpots) * 1e3:.2f} ms at the client). Cut into consecutive samples of at least w "
        "seconds of decode, each sample's mean TPOT is off the whole run's by:",
        "",
        "| decode timed per sample (s) | samples | RMS error | largest error |",
        "|---|---|---|---|",
        *[f"| {r.window_s:g} | {r.samples} | {r.rms_error:.1%} | {r.max_error:.1%} |" for r in rows],
        "",
        "`remoe profile --quick` times about one second of decode per configuration (2 repeats x 4 prompt lengths x "
        "8 tokens on the tiny model); a full profile, and the evaluation's, time at least "
        f"`remoe.constants.DECODE_SAMPLE_S` ({DECODE_SAMPLE_S:g}) seconds each.",
        "",
    ]
    (args.out / "profile_sampling.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
