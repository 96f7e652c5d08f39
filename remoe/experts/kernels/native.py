"""The native gated-MLP kernel (gated_mlp.c): built once per host with its compiler, loaded through ctypes.

Built with `-O3 -march=native -fopenmp` into a cache folder keyed by the source, the flags and the CPU, so
every process on a host after the first loads it in milliseconds. Where no compiler is found, or the CPU has
no AVX-512 (the kernel's fast path), `load()` returns None with the reason in `unavailable_reason()`, and the
executor uses the torch kernels instead. The library links libgomp by soname, so it shares torch's OpenMP
runtime (one thread pool, not two competing for the cores).

T = rows, H = hidden size, I = expert intermediate size, K = top-k slots per row, E = experts in the layer.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = "gated_mlp.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
BLOCK_ROWS = 16  # rows per packed block (NB in the C source)
WEIGHT_TYPES = {torch.float32: 0, torch.bfloat16: 1}
CACHE_ENV = "REMOE_KERNEL_CACHE"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None  # why the kernel is unavailable, once known


def cache_dir() -> Path:
    """Where built kernels are kept: $REMOE_KERNEL_CACHE, else ~/.cache/remoe/kernels."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "remoe" / "kernels"


def _cpu_signature() -> str:
    """-march=native code runs only on CPUs like this one: the model name and flags go into the cache key."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    wanted = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
    return "\n".join(wanted)


def _has_avx512() -> bool:
    return "avx512f" in _cpu_signature().split()


def _build(source: bytes, out: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise OSError("no C compiler found (install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / SOURCE
        src.write_bytes(source)
        built = Path(tmp) / out.name
        result = subprocess.run(
            [compiler, *FLAGS, "-o", str(built), str(src), "-lm"], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise OSError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(built, out)  # atomic: processes building at once each install a whole library


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None when it cannot run here (see unavailable_reason())."""
    global _lib, _reason
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        if not _has_avx512():
            _reason = "the CPU has no AVX-512 (the native kernel's fast path)"
            return None
        source = resources.files("remoe.experts.kernels").joinpath(SOURCE).read_bytes()
        key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_signature().encode()).hexdigest()[:16]
        path = cache_dir() / f"remoe_gated_mlp_{key}.so"
        try:
            if not path.is_file():
                log.info("building the native expert kernel into %s", path)
                _build(source, path)
            lib = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as e:
            _reason = f"the native kernel could not be built or loaded: {e}"
            log.warning("%s; experts run on torch kernels", _reason)
            return None
        _declare(lib)
        _lib = lib
        return lib


def unavailable_reason() -> str | None:
    load()
    return _reason


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.remoe_pack.argtypes = [ptr, cint, i64, i64, ptr]
    lib.remoe_pack.restype = None
    lib.remoe_gated_experts.argtypes = [i64, i64, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, cint, cint, ptr, ptr, cint]
    lib.remoe_gated_experts.restype = i64


def packed_numel(rows: int, cols: int) -> int:
    return -(-rows // BLOCK_ROWS) * BLOCK_ROWS * cols


def pack(weight: torch.Tensor) -> torch.Tensor:
    """W [N, K] -> the kernel's layout [ceil(N/16), K, 16] (flat), in fresh anonymous memory."""
    lib = load()
    assert lib is not None, "pack() needs the native kernel"
    w = weight.contiguous()
    rows, cols = w.shape
    out = torch.empty(packed_numel(rows, cols), dtype=w.dtype)
    lib.remoe_pack(w.data_ptr(), WEIGHT_TYPES[w.dtype], rows, cols, out.data_ptr())
    return out


@dataclass(frozen=True, slots=True)
class GatedShape:
    hidden: int  # H
    intermediate: int  # I
    dtype: torch.dtype  # of the packed weights
    round_bf16: bool  # round intermediates to bf16 where the eager bf16 module stores them


def gated_experts(
    shape: GatedShape,
    hidden: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    gate_up: dict[int, torch.Tensor],
    down: dict[int, torch.Tensor],
    num_experts: int,
) -> torch.Tensor:
    """hidden [T, H] float32, index [T, K] int64 (-1: not here), weights [T, K] float32, packed weights of
    every expert `index` names -> weighted sum [T, H] float32, in one call for the whole layer."""
    lib = load()
    assert lib is not None, "gated_experts() needs the native kernel"
    tokens, top_k = index.shape
    h, i = shape.hidden, shape.intermediate
    pointers = (ctypes.c_void_p * num_experts)()
    down_pointers = (ctypes.c_void_p * num_experts)()
    for e, w in gate_up.items():
        pointers[e] = w.data_ptr()
        down_pointers[e] = down[e].data_ptr()
    out = torch.zeros(tokens, h)
    scratch = torch.empty(tokens * (2 * h + 3 * i))
    missing = lib.remoe_gated_experts(
        tokens,
        h,
        i,
        top_k,
        hidden.data_ptr(),
        index.data_ptr(),
        weights.data_ptr(),
        num_experts,
        pointers,
        down_pointers,
        WEIGHT_TYPES[shape.dtype],
        int(shape.round_bf16),
        out.data_ptr(),
        scratch.data_ptr(),
        torch.get_num_threads(),
    )
    if missing == -2:
        raise MemoryError("native kernel: no memory for the row lists")
    if missing:
        raise RuntimeError(f"native kernel: expert {missing - 1} was routed here without weights")
    return out
