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


def source_commit() -> str:
    """The checkout's short commit, with "+changes" when tracked files differ from it ("unknown" outside git)."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return (head.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")
