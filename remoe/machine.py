"""One line that says which machine a measurement came from: CPU model x cores, torch threads, torch version."""

from __future__ import annotations

import platform
from pathlib import Path


def machine_description() -> str:
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.is_file()
        else []
    )
    cpu = f"{names[0]} x {len(names)}" if names else (platform.processor() or platform.machine())
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


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
