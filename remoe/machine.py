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
