"""How long `remoe profile` must time decode for its TPOT to be the one a workload later sees, on this machine.

`--instances` `remoe up` clusters, one after another (every expert on the expert services, as the profile's main
configuration), each decode the same 128-token prompt over and over for `--seconds` / instances. Two spreads:
- within a cluster: its series cut into consecutive samples of at least w seconds of decode, each sample's mean
  TPOT against the cluster's own mean: what a profile that times w seconds is off by, from the machine alone;
- between clusters: each cluster's mean against the mean of all. A system is served by one cluster and profiled on
  another, so the cost model can be no closer to a run than this either.

Usage: python -m bench.profile_sampling [--model DIR] [--seconds 240] [--instances 4] [--out docs/results]
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
    rms_error: float  # of a sample's mean TPOT against its cluster's mean, relative
    max_error: float


def spreads(series: list[list[float]], new_tokens: int, windows: tuple[float, ...] = WINDOWS_S) -> list[Spread]:
    """Each window's spread over consecutive samples of each series (one TPOT per request, in order), against that
    series' own mean, pooled over the series; a window with fewer than two samples in all is left out."""
    out = []
    for w in windows:
        errors = []
        for tpots in series:
            overall, chunk, decode = float(np.mean(tpots)), [], 0.0
            for t in tpots:
                chunk.append(t)
                decode += t * (new_tokens - 1)
                if decode >= w:
                    errors.append(float(np.mean(chunk)) / overall - 1)
                    chunk, decode = [], 0.0
        if len(errors) < 2:
            continue
        e = np.array(errors)
        out.append(Spread(w, len(e), float(np.sqrt(np.mean(e**2))), float(np.max(np.abs(e)))))
    return out


def between(series: list[list[float]]) -> tuple[float, float]:
    """(RMS, largest) of each series' mean TPOT against the mean of the series' means."""
    means = np.array([np.mean(t) for t in series])
    e = means / means.mean() - 1
    return float(np.sqrt(np.mean(e**2))), float(np.max(np.abs(e)))


def measure(model: Path, seconds: float) -> list[float]:
    """Client TPOT of one request after another on a fresh cluster, for `seconds`."""
    from remoe.cluster import LocalCluster
    from remoe.profiling.measure import prompt_ids
    from remoe.sdk import Client

    ids = prompt_ids(128)  # the profile's own 128-token prompt
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
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to decode in all (default 240)")
    parser.add_argument("--instances", type=int, default=4, help="clusters, one after another (default 4)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    if not args.seconds > 0:
        parser.error("--seconds must be > 0")
    if args.instances < 1:
        parser.error("--instances must be >= 1")
    if args.model is None:
        from bench.evaluation import models

        args.model = models.tiny(minutes=8).path
    series = [measure(args.model, args.seconds / args.instances) for _ in range(args.instances)]
    rows = spreads(series, NEW_TOKENS)
    tpots = [t for one in series for t in one]
    rms, largest = between(series) if args.instances > 1 else (0.0, 0.0)
    provenance = {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {**provenance, "model": str(args.model), "new_tokens": NEW_TOKENS, "tpot_s": series}
    payload["spreads"] = [asdict(r) for r in rows]
    payload["between_instances"] = {"rms_error": rms, "max_error": largest, "instances": args.instances}
    (args.out / "profile_sampling.json").write_text(json.dumps(payload, indent=1) + "\n")
    means = ", ".join(f"{np.mean(one) * 1e3:.2f}" for one in series)
    lines = [
        "# How long a profile must time decode, and how far one cluster is from another (measured)",
        "",
        f"{provenance['machine']}; {provenance['date']}; commit {provenance['commit']}. "
        f"`python -m bench.profile_sampling --seconds {args.seconds:g} --instances {args.instances}`.",
        "",
        f"{args.instances} `remoe up` clusters of `{args.model.name}`, one after another (every expert on the expert "
        f"services, no predictor), each decoded a 128-token prompt {NEW_TOKENS} tokens at a time for "
        f"{args.seconds / args.instances:g} s: {len(tpots)} requests, mean TPOT at the client {means} ms.",
        "",
        f"Between clusters: each cluster's mean TPOT is off the mean of all by {rms:.1%} RMS (largest {largest:.1%}). "
        "A system is served by one cluster and profiled on others, so its modelled time can be no closer than this.",
        "",
        "Within a cluster: cut into consecutive samples of at least w seconds of decode, each sample's mean TPOT is "
        "off its cluster's mean by:",
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
