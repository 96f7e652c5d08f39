"""The evaluation's held memory counts a page shared by several processes once (a forked function instance
shares its template's pages copy-on-write), keeps the RSS sum beside it, and follows processes that come and go."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.evaluation import page_frames
from bench.evaluation.resident import HELD_ONCE, ResidentSampler

MIB = 2**20
SHARED_MIB = 96

# A parent that fills a buffer, forks a child that only reads it (copy-on-write: the pages stay shared), prints the
# child's pid and waits on stdin; on "touch" the child writes its copy (its pages become its own).
_FORKER = f"""
import os, sys, time
buf = bytearray({SHARED_MIB} * {MIB})
for i in range(0, len(buf), 4096):
    buf[i] = 1
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    if os.read(r, 5) == b"touch":
        for i in range(0, len(buf), 4096):
            buf[i] = 2
        time.sleep(60)
    os._exit(0)
print(pid, flush=True)
if sys.stdin.readline().strip() == "touch":
    os.write(w, b"touch")
    time.sleep(60)
"""

pytestmark = pytest.mark.skipif(not page_frames.readable(), reason="frame numbers need root (CAP_SYS_ADMIN)")


@pytest.fixture
def forker():
    proc = subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    yield proc, child
    proc.kill()
    proc.wait()
    subprocess.run(["kill", "-9", str(child)], check=False, capture_output=True)


def test_pages_a_forked_child_shares_are_held_once(forker):
    parent, child = forker[0].pid, forker[1]
    once = page_frames.held_once([parent, child])
    assert once[parent][0] >= SHARED_MIB * MIB  # the buffer, under its first holder
    assert once[child][0] < SHARED_MIB * MIB / 4  # the child's own pages only: the buffer is the parent's
    # the other order gives the shared pages to the child instead; the total is the same
    swapped = page_frames.held_once([child, parent])
    assert sum(map(sum, swapped.values())) == sum(map(sum, once.values()))
    assert swapped[child][0] >= SHARED_MIB * MIB


def test_held_counts_the_shared_buffer_once_and_the_rss_sum_twice(forker):
    proc, child = forker
    sampler = ResidentSampler({"service": proc.pid}, period_s=0.05).begin()
    time.sleep(0.3)
    held = sampler.finish()
    assert held.basis == HELD_ONCE
    rss = sum(map(sum, held.rss_gb_s.values())) / held.seconds * 1e9
    once = sum(map(sum, held.gb_s.values())) / held.seconds * 1e9
    assert rss >= 2 * SHARED_MIB * MIB  # parent and child each count the buffer
    assert once < rss - 0.75 * SHARED_MIB * MIB  # this machine holds it once
    assert held.gb_s["service/children"][0] < held.rss_gb_s["service/children"][0] / 4


def test_a_child_that_writes_its_copy_holds_it_as_its_own(forker):
    proc, child = forker
    proc.stdin.write("touch\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 10
    while page_frames.held_once([proc.pid, child]).get(child, (0, 0))[0] < SHARED_MIB * MIB:
        assert time.monotonic() < deadline, "the child's written copy never showed as its own pages"
        time.sleep(0.05)
    sampler = ResidentSampler({"service": proc.pid}, period_s=0.05).begin()
    time.sleep(0.2)
    held = sampler.finish()
    assert held.gb_s["service/children"][0] / held.seconds * 1e9 >= SHARED_MIB * MIB
