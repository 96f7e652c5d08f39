"""bench/gpu/run.sh must skip itself cleanly, with the reason written down, where there is no GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run for real")
def test_gpu_script_skips_without_a_gpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "bench/gpu/run.sh"), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "skipped: no CUDA device" in done.stdout
    result = json.loads((tmp_path / "out/gpu.json").read_text())
    assert result["skipped"].startswith("no CUDA device")


def test_gpu_script_without_arguments_prints_usage_and_fails():
    done = subprocess.run(["bash", str(ROOT / "bench/gpu/run.sh")], capture_output=True, text=True)
    assert done.returncode == 1
    assert "Usage: bench/gpu/run.sh OUT" in done.stdout
