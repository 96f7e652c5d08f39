"""A function instance's configuration, all from environment variables (Knative's way).

The services' settings are pydantic-settings classes (remoe/settings.py); the function's is a plain dataclass
read by hand on purpose: importing pydantic-settings costs about 0.17 s, which every cold start would pay.
The platform that starts a function (local processes, or Knative via the function template) sets these:

PORT                    port to serve h2c gRPC on (Knative sets it; default 8080)
REMOE_HOST              address to bind (default 127.0.0.1; the Knative manifest sets 0.0.0.0)
REMOE_MODEL_DIR         checkpoint or split directory
REMOE_FUNCTION_EXPERTS  hosted experts, "LAYER:E,E,...;LAYER:E,..." e.g. "1:3,5;2:0"
REMOE_FUNCTION_NAME     name in status and traces (default "function")
REMOE_MEMORY_BYTES      the instance's memory size; it refuses to start when its experts cannot fit. It also
                        buys compute, 1 GiB = 1 vCPU as in the paper: the instance computes with
                        floor(GiB) threads (at least 1, at most the machine's cores)
REMOE_DTYPE             compute dtype (default: the checkpoint's own)
REMOE_READY_FILE        local platform only: write the port here once serving
REMOE_SPAWNED_AT        local platform only: time.time() at spawn, to measure process start
REMOE_LOCAL_PLANE       local platform only: "1" serves Compute on a unix socket too (the co-located data plane,
                        remoe/transport/local_plane.py) for the backbone on the same host
REMOE_FUNCTION_EXPERTS_RECORD
                        local platform only: the experts record the backbone wrote for this checkpoint
                        (remoe/functions/experts_record.py): the experts are read without importing transformers
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from remoe.constants import MEMORY_MB_PER_VCPU, FunctionEnv
from remoe.experts.cache import ExpertId
from remoe.ports import DEFAULT_PORTS

# Set by the local platform only: the backbone process that started this function (it exits when that one is gone).


def format_experts(experts: list[ExpertId]) -> str:
    by_layer: dict[int, list[int]] = {}
    for layer, e in sorted(experts):
        by_layer.setdefault(layer, []).append(e)
    return ";".join(f"{layer}:{','.join(map(str, es))}" for layer, es in by_layer.items())


def parse_experts(text: str) -> list[ExpertId]:
    experts: list[ExpertId] = []
    try:
        for group in filter(None, text.split(";")):
            layer, _, ids = group.partition(":")
            experts += [(int(layer), int(e)) for e in ids.split(",") if e]
    except ValueError:
        raise ValueError(f"REMOE_FUNCTION_EXPERTS={text!r} is not 'LAYER:E,E;LAYER:E'") from None
    if not experts:
        raise ValueError("REMOE_FUNCTION_EXPERTS names no experts")
    return experts


@dataclass(slots=True)
class FunctionConfig:
    model_dir: Path
    experts: list[ExpertId]
    name: str = "function"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORTS["function"]
    memory_bytes: int | None = None
    dtype: str = "auto"
    ready_file: Path | None = None
    spawned_at: float | None = None
    local_plane: bool = False
    experts_record: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FunctionConfig:
        env = dict(os.environ if env is None else env)
        missing = [k for k in (FunctionEnv.MODEL_DIR, FunctionEnv.EXPERTS) if not env.get(k)]
        if missing:
            raise ValueError(f"set {', '.join(missing)} (see python -m remoe.functions.expert --help)")
        return cls(
            model_dir=Path(env[FunctionEnv.MODEL_DIR]),
            experts=parse_experts(env[FunctionEnv.EXPERTS]),
            name=env.get(FunctionEnv.NAME, "function"),
            host=env.get(FunctionEnv.HOST, "127.0.0.1"),
            port=int(env.get(FunctionEnv.PORT, DEFAULT_PORTS["function"])),
            memory_bytes=int(env[FunctionEnv.MEMORY_BYTES]) if env.get(FunctionEnv.MEMORY_BYTES) else None,
            dtype=env.get(FunctionEnv.DTYPE, "auto"),
            ready_file=Path(env[FunctionEnv.READY_FILE]) if env.get(FunctionEnv.READY_FILE) else None,
            spawned_at=float(env[FunctionEnv.SPAWNED_AT]) if env.get(FunctionEnv.SPAWNED_AT) else None,
            local_plane=env.get(FunctionEnv.LOCAL_PLANE) == "1",
            experts_record=Path(env[FunctionEnv.EXPERTS_RECORD]) if env.get(FunctionEnv.EXPERTS_RECORD) else None,
        )

    @property
    def threads(self) -> int:
        """vCPUs bought by the memory size: 1 per whole GiB, within [1, cores]."""
        cores = os.cpu_count() or 1
        if self.memory_bytes is None:
            return cores
        return max(1, min(cores, self.memory_bytes // (MEMORY_MB_PER_VCPU * 2**20)))

    def to_env(self) -> dict[str, str]:
        env = {
            FunctionEnv.MODEL_DIR: str(self.model_dir),
            FunctionEnv.EXPERTS: format_experts(self.experts),
            FunctionEnv.NAME: self.name,
            FunctionEnv.HOST: self.host,
            FunctionEnv.PORT: str(self.port),
            FunctionEnv.DTYPE: self.dtype,
        }
        if self.memory_bytes is not None:
            env[FunctionEnv.MEMORY_BYTES] = str(self.memory_bytes)
        if self.ready_file is not None:
            env[FunctionEnv.READY_FILE] = str(self.ready_file)
        if self.local_plane:
            env[FunctionEnv.LOCAL_PLANE] = "1"
        if self.experts_record is not None:
            env[FunctionEnv.EXPERTS_RECORD] = str(self.experts_record)
        return env
