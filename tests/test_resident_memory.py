"""The evaluation bills the memory processes actually held (bench/evaluation/resident.py): a process and its
children, sampled from /proc, integrated over time, priced per kind of memory."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.evaluation.resident import HeldMemory, ResidentSampler

HOLD = """
import subprocess, sys, time
held = bytearray({parent})
child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray({child}); time.sleep(30)"])
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.processes
def test_a_process_and_its_children_are_sampled_apart_and_integrated():
    parent_bytes, child_bytes = 300_000_000, 150_000_000
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(parent=parent_bytes, child=child_bytes)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the child allocates
        sampler = ResidentSampler({"service": proc.pid}, period_s=0.1).begin()
        time.sleep(1.0)
        held = sampler.finish()
    finally:
        proc.kill()
        proc.wait()
    assert held.seconds >= 0.9
    parent_gb = held.total_gb_s("service") / held.seconds
    child_gb = held.total_gb_s("service/children") / held.seconds
    assert parent_bytes / 1e9 <= parent_gb <= parent_bytes / 1e9 + 0.1  # the bytearray, plus Python itself
    assert child_bytes / 1e9 <= child_gb <= child_bytes / 1e9 + 0.1
    assert held.gb_s["service"][0] > held.gb_s["service"][1]  # a bytearray is anonymous memory


def test_a_run_shorter_than_the_sampling_period_is_held_to_its_end():
    """A workload that ends before the second sample still bills the memory over its whole length."""
    import os

    sampler = ResidentSampler({"bench": os.getpid()}, period_s=30.0).begin()
    time.sleep(0.3)
    held = sampler.finish()
    assert 0.3 <= held.seconds < 5.0
    assert held.total_gb_s("bench") >= 0.3 * held.peak_gb["bench"] * 0.5


def test_each_role_is_priced_as_its_memory():
    held = HeldMemory({"backbone": (2.0, 1.0), "expert-0": (4.0, 0.0)}, {}, 1.0)
    assert held.cost({"backbone"}, cpu_gb_s=1.0, gpu_gb_s=10.0) == pytest.approx(3.0 * 10.0 + 4.0 * 1.0)
    assert held.cost(set(), cpu_gb_s=1.0, gpu_gb_s=10.0) == pytest.approx(7.0)
