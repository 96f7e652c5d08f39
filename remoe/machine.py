"""One line that says which machine a measurement came from: CPU model x cores, the vector extensions the
CPU kernels can use, torch threads, torch version."""

from __future__ import annotations

import platform
from pathlib import Path

# CPU flags that change which kernel runs and how fast (two machines with one model name can differ here):
# bf16 and int8 dot products, tile units. The ATen dispatch level (AVX2 / AVX512) is named before them.
KERNEL_FLAGS = {
    "avx512_bf16": "AVX512-BF16",
    "avx512_vnni": "AVX512-VNNI",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


def vector_extensions(cpu_flags: set[str], aten_capability: str) -> str:
    """E.g. "ATen AVX512; AVX512-BF16, AVX512-VNNI": what ATen dispatches to, then the kernel-relevant flags present
    ("ATen AVX2; none" on a CPU without AVX-512, where bf16 matmuls and int4 kernels are much slower)."""
    present = [name for flag, name in KERNEL_FLAGS.items() if flag in cpu_flags]
    return f"ATen {aten_capability}; {', '.join(present) or 'none'}"


def machine_description() -> str:
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    cpu = f"{names[0]} x {len(names)}" if names else (platform.processor() or platform.machine())
    vector = vector_extensions(flags, torch.backends.cpu.get_cpu_capability())
    return f"{cpu} ({vector}), {torch.get_num_threads()} torch threads, torch {torch.__version__}"


RESULTS_DIR = "docs/results"  # what benchmarks write: their own output does not make the source "+changes"


def source_commit() -> str:
    """The checkout's short commit, with "+changes" when tracked files other than the results differ from it
    ("unknown" outside git): a second benchmark run after a first has rewritten results on the same code."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS_DIR}"],
        capture_output=True,
        text=True,
    )
    return (head.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")
