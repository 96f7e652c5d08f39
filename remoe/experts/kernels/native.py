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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = "gated_mlp.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
BLOCK_ROWS = 16  # rows per packed block (NB in the C source)
WEIGHT_TYPES = {torch.float32: 0, torch.bfloat16: 1}
INT8_TYPE, INT4_TYPE = 2, 3  # W_I8, W_I4 in the C source
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


class _Packed(ctypes.Structure):
    """`Packed` in the C source: one matrix in the kernel's layout."""

    _fields_ = [
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("mins", ctypes.c_void_p),
        ("group", ctypes.c_int64),
        ("vnni", ctypes.c_int64),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.remoe_pack.argtypes = [ptr, cint, i64, i64, ptr]
    lib.remoe_pack.restype = None
    lib.remoe_pack_items.argtypes = [ptr, i64, i64, i64, ptr]
    lib.remoe_pack_items.restype = None
    lib.remoe_pack_i8_vnni.argtypes = [ptr, i64, i64, ptr]
    lib.remoe_pack_i8_vnni.restype = None
    lib.remoe_pack_i4_vnni.argtypes = [ptr, i64, i64, ptr]
    lib.remoe_pack_i4_vnni.restype = None
    lib.remoe_has_vnni.argtypes = []
    lib.remoe_has_vnni.restype = cint
    lib.remoe_gated_experts.argtypes = [i64, i64, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, cint, cint, ptr, cint]
    lib.remoe_gated_experts.restype = i64
    lib.remoe_silu_mul.argtypes = [ptr, ptr, ptr, i64, cint]
    lib.remoe_silu_mul.restype = None


def packed_numel(rows: int, cols: int) -> int:
    return -(-rows // BLOCK_ROWS) * BLOCK_ROWS * cols


@dataclass(frozen=True, slots=True)
class PackedMatrix:
    """One matrix in the kernel's layout: packed weights, and the scales (and minimums) of int8 and int4."""

    weight: torch.Tensor  # flat, [ceil(N/16), K, 16] (int4: [ceil(N/16), K/2, 16] bytes)
    scale: torch.Tensor | None = None  # int8: float32 [ceil(N/16)*16]; int4: float16 [ceil(N/16), K/G, 16]
    mins: torch.Tensor | None = None  # int4: float16 [ceil(N/16), K/G, 16]
    group: int = 0  # int4: G
    vnni: bool = False  # int8/int4 in the VNNI packing: activations quantized to int8 per 32 columns
    struct: _Packed = field(init=False, repr=False, compare=False)  # `Packed` for the C call, built once

    def __post_init__(self) -> None:
        # built here, not per call: a layer call names every hosted expert, ~1 us each through ctypes
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        packed = _Packed(self.weight.data_ptr(), ptr(self.scale), ptr(self.mins), self.group, int(self.vnni))
        object.__setattr__(self, "struct", packed)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.weight, self.scale, self.mins) if t is not None)


def _pack_items(t: torch.Tensor) -> torch.Tensor:
    """[N, K] of any item size -> [ceil(N/16), K, 16] (flat), zero rows past N."""
    lib = load()
    assert lib is not None, "packing needs the native kernel"
    t = t.contiguous()
    rows, cols = t.shape
    out = torch.empty(packed_numel(rows, cols), dtype=t.dtype)
    lib.remoe_pack_items(t.data_ptr(), t.element_size(), rows, cols, out.data_ptr())
    return out


def pack(weight: torch.Tensor) -> PackedMatrix:
    """W [N, K] float32 or bf16 -> the kernel's layout, in fresh anonymous memory."""
    lib = load()
    assert lib is not None, "pack() needs the native kernel"
    w = weight.contiguous()
    rows, cols = w.shape
    out = torch.empty(packed_numel(rows, cols), dtype=w.dtype)
    lib.remoe_pack(w.data_ptr(), WEIGHT_TYPES[w.dtype], rows, cols, out.data_ptr())
    return PackedMatrix(out)


VNNI_GROUP = 32  # activation columns per int8 scale in the VNNI kernels (AG in the C source)


def _pair_numel(rows: int, cols: int) -> int:
    """The VNNI packings interleave pairs of 16-row blocks: rows padded to whole pairs."""
    return -(-rows // (2 * BLOCK_ROWS)) * 2 * BLOCK_ROWS * cols


def vnni_fits(columns: int, group: int | None = None) -> bool:
    """Whether a quantized matrix with `columns` input columns (int4: `group` per scale) takes the VNNI kernels
    here: the CPU has AVX512-VNNI and the sizes divide into 32-column activation groups."""
    lib = load()
    if lib is None or not lib.remoe_has_vnni() or columns % VNNI_GROUP:
        return False
    return group is None or group % VNNI_GROUP == 0


def pack_int8(qweight: torch.Tensor, scale: torch.Tensor, vnni: bool | None = None) -> PackedMatrix:
    """int8 q [N, K] and float32 scale [N] -> the kernel's int8 layout (scales padded to whole blocks); the VNNI
    packing where it fits (`vnni` None) or as asked."""
    lib = load()
    assert lib is not None, "packing needs the native kernel"
    rows, columns = qweight.shape
    padded = torch.zeros(-(-rows // BLOCK_ROWS) * BLOCK_ROWS, dtype=torch.float32)
    padded[:rows] = scale
    if not (vnni_fits(columns) if vnni is None else vnni):
        return PackedMatrix(_pack_items(qweight), padded)
    q = qweight.contiguous()
    out = torch.empty(_pair_numel(rows, columns), dtype=torch.uint8)
    lib.remoe_pack_i8_vnni(q.data_ptr(), rows, columns, out.data_ptr())
    return PackedMatrix(out, padded, vnni=True)


def pack_int4(qweight: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor, vnni: bool | None = None) -> PackedMatrix:
    """uint8 q [N, K/2] (two columns a byte) and float16 scale, min [N, K/G] -> the kernel's int4 layout; the
    VNNI packing where it fits (`vnni` None) or as asked."""
    lib = load()
    assert lib is not None, "packing needs the native kernel"
    rows, columns = qweight.shape[0], 2 * qweight.shape[1]
    group = columns // scale.shape[1]
    scales, minimums = _pack_items(scale), _pack_items(mins)
    if not (vnni_fits(columns, group) if vnni is None else vnni):
        return PackedMatrix(_pack_items(qweight), scales, minimums, group)
    q = qweight.contiguous()
    out = torch.empty(_pair_numel(rows, columns // 2), dtype=torch.uint8)
    lib.remoe_pack_i4_vnni(q.data_ptr(), rows, columns, out.data_ptr())
    return PackedMatrix(out, scales, minimums, group, vnni=True)


@dataclass(frozen=True, slots=True)
class GatedShape:
    hidden: int  # H
    intermediate: int  # I
    weight_type: int  # of the packed weights: WEIGHT_TYPES[dtype], INT8_TYPE or INT4_TYPE
    round_bf16: bool  # round intermediates to bf16 where the eager bf16 module stores them


def gated_experts(
    shape: GatedShape,
    hidden: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    gate_up: dict[int, PackedMatrix],
    down: dict[int, PackedMatrix],
    num_experts: int,
) -> torch.Tensor:
    """hidden [T, H] float32, index [T, K] int64 (-1: not here), weights [T, K] float32, packed weights of
    every expert `index` names -> weighted sum [T, H] float32, in one call for the whole layer."""
    lib = load()
    assert lib is not None, "gated_experts() needs the native kernel"
    tokens, top_k = index.shape
    h, i = shape.hidden, shape.intermediate
    packed_gate_up = (_Packed * num_experts)()  # zeroed: an expert not here has w NULL
    packed_down = (_Packed * num_experts)()
    for e, w in gate_up.items():
        packed_gate_up[e] = w.struct
        packed_down[e] = down[e].struct
    out = torch.zeros(tokens, h)
    missing = lib.remoe_gated_experts(
        tokens,
        h,
        i,
        top_k,
        hidden.data_ptr(),
        index.data_ptr(),
        weights.data_ptr(),
        num_experts,
        packed_gate_up,
        packed_down,
        shape.weight_type,
        int(shape.round_bf16),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    if missing == -2:
        raise MemoryError("native kernel: out of memory for its row lists and buffers")
    if missing:
        raise RuntimeError(f"native kernel: expert {missing - 1} was routed here without weights")
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor, fast: bool) -> torch.Tensor:
    """silu(gate) * up [n] float32 as the kernel computes it between an expert's matrices: `fast` the quantized
    kernels' vectorised SiLU, else the exact path's expf (for tests)."""
    lib = load()
    assert lib is not None, "silu_mul() needs the native kernel"
    g, u = gate.float().contiguous(), up.float().contiguous()
    out = torch.empty_like(g)
    lib.remoe_silu_mul(g.data_ptr(), u.data_ptr(), out.data_ptr(), g.numel(), int(fast))
    return out
