"""A service's startup record and the breakdown `remoe up` prints from it (the processes' side is in test_cluster)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from remoe.server import startup


@pytest.fixture(autouse=True)
def _no_record_left_behind(monkeypatch):
    """begin() sets this process's record; in-process servers of later tests must not write it."""
    monkeypatch.setattr(startup, "_record", None)


def test_a_process_knows_when_it_was_created():
    """A process's creation time, read from /proc, is when its starter spawned it (10 ms ticks; python's own start
    comes after)."""
    spawned = time.time()
    out = subprocess.run(
        [sys.executable, "-c", "from remoe.server.startup import process_started_at; print(process_started_at())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert abs(float(out.stdout) - spawned) < 0.5


def test_steps_accumulate_and_the_record_round_trips(tmp_path):
    record = startup.begin()
    with startup.step("open weights"):
        pass
    with startup.step("open weights"):
        pass
    assert list(record.steps) == ["open weights"] and record.steps["open weights"] >= 0
    record.serving = record.main_entered + 2.0
    path = startup.startup_file(tmp_path / "backbone.port")
    record.save(path)
    assert path.name == "backbone.startup.json" and startup.StartupRecord.load(path) == record
    assert startup.StartupRecord.load(tmp_path / "missing.json") is None


def test_the_breakdown_splits_a_start_into_process_imports_steps_and_the_rest():
    record = startup.StartupRecord(process_start=100.5, main_entered=106.5, steps={"load model": 2.0}, serving=109.0)
    lines = startup.breakdown(
        [startup.ServiceStart("backbone", 100.0, record), startup.ServiceStart("gateway", 109.0, None)], 99.0
    )
    assert lines == [
        "backbone: spawned at 1.0 s, serving at 10.0 s "
        "(process 0.50, imports 6.00, load model 2.00, other init 0.50 s)",
        "gateway: spawned at 10.0 s; no startup record",
    ]
