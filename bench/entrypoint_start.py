"""The Knative function entrypoint run as a plain process: start to health SERVING and to a first answer, on the
original checkpoint, on a split made before the experts-math record (both import transformers) and on a split
with it (the lean start); and where the imports' time goes, per package.

Used by bench/cold_start.py (its section "The Knative entrypoint").
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from remoe.checkpoint.manifest import MANIFEST_FILE
from remoe.functions.config import FunctionConfig
from remoe.model.split import split_checkpoint
from remoe.platform.inherited_env import function_environment

ENTRYPOINT = [sys.executable, "-m", "remoe.functions.expert"]
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


@dataclass
class EntrypointRow:
    model: str
    weights: str  # what the entrypoint was pointed at
    ready_s: float  # median seconds from the process's start to health SERVING
    first_answer_s: float  # median seconds from the start to the first batch's answer
    transformers_imported: bool
    imports_s: float  # the function's own breakdown (first run)


def _old_split(split: Path) -> Path:
    """The same split without the manifest's record, as `remoe split` wrote it before the record existed."""
    old = split.with_name(split.name + "-no-record")
    if not old.exists():
        shutil.copytree(split, old)
        manifest = json.loads((old / MANIFEST_FILE).read_text())
        manifest.pop("experts_math", None)
        (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    return old


def model_dirs(checkpoint: Path, tmp: Path) -> dict[str, Path]:
    split = tmp / f"{checkpoint.name}-split"
    if not split.exists():
        split_checkpoint(checkpoint, split, progress=False)
    return {
        "original checkpoint": checkpoint,
        "split, no experts-math record": _old_split(split),
        "split with the record (lean)": split,
    }


def _serving(port: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def _start_once(
    model_dir: Path, experts: list[tuple[int, int]], env: dict[str, str], tmp: Path, answer: Callable[[str], dict]
) -> tuple[float, float, str, dict]:
    """(start to SERVING, start to first answer, the log, the function's breakdown) for one fresh process."""
    ready, log = tmp / "entry.port", tmp / "entry.log"
    ready.unlink(missing_ok=True)
    config = FunctionConfig(model_dir=model_dir, experts=experts, name="entry", port=0, ready_file=ready)
    start = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(
            ENTRYPOINT, env={**env, **config.to_env(), "REMOE_SPAWNED_AT": repr(start)}, stdout=out, stderr=out
        )
    try:
        while not ready.is_file():  # the server writes it after setting health SERVING
            if proc.poll() is not None:
                raise RuntimeError(f"the entrypoint exited while starting: {log.read_text()[-2000:]}")
            time.sleep(0.002)
        ready_s = time.time() - start
        port = ready.read_text().strip()
        assert _serving(port), "the ready file was written before health said SERVING"
        breakdown = answer(port)
        return ready_s, time.time() - start, log.read_text(), breakdown
    finally:
        proc.terminate()
        proc.wait(10)


def bench_entrypoint(
    name: str,
    checkpoint: Path,
    experts: list[tuple[int, int]],
    env: dict[str, str],
    tmp: Path,
    answer: Callable[[str], dict],
    repeats: int,
) -> list[EntrypointRow]:
    dirs = model_dirs(checkpoint, tmp)
    runs: dict[str, list[tuple]] = {label: [] for label in dirs}
    env = {**function_environment(), **env}
    for _ in range(repeats):
        for label, model_dir in dirs.items():  # interleaved: the machine's load drifts
            runs[label].append(_start_once(model_dir, experts, env, tmp, answer))
    rows = []
    for label, results in runs.items():
        log, breakdown = results[0][2], results[0][3]
        rows.append(
            EntrypointRow(
                name,
                label,
                round(statistics.median(r[0] for r in results), 3),
                round(statistics.median(r[1] for r in results), 3),
                "transformers imported: yes" in log,
                breakdown.get("imports_s", 0.0),
            )
        )
    return rows


def import_seconds_by_package(
    model_dir: Path, experts: list[tuple[int, int]], env: dict[str, str], tmp: Path, top: int = 8
) -> dict[str, float]:
    """Self time of every module the entrypoint imports up to SERVING (python -X importtime), summed per top-level
    package, largest first; the rest as "other". importtime's own bookkeeping inflates these a little."""
    ready, log = tmp / "imports.port", tmp / "imports.log"
    ready.unlink(missing_ok=True)
    config = FunctionConfig(model_dir=model_dir, experts=experts, name="imports", port=0, ready_file=ready)
    with log.open("w") as out:  # a file, not a pipe: thousands of lines would fill a pipe and stall the start
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", *ENTRYPOINT[1:]],
            env={**function_environment(), **env, **config.to_env()},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 300
        while not ready.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the entrypoint did not become ready: {log.read_text()[-2000:]}")
            time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(30)
    per_package: dict[str, float] = defaultdict(float)
    for line in log.read_text().splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            per_package[match.group(4).split(".")[0]] += int(match.group(1)) / 1e6
    ranked = sorted(per_package.items(), key=lambda kv: -kv[1])
    out = {name: round(s, 3) for name, s in ranked[:top]}
    out["other"] = round(sum(s for _, s in ranked[top:]), 3)
    return out
