"""SECURITY.md's promises that the source itself can be checked for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from remoe.settings import SERVICES

ROOT = Path(__file__).resolve().parent.parent
UNSAFE = re.compile(
    r"^\s*(import pickle|from pickle|import dill|import cloudpickle)"
    r"|torch\.load\(|allow_pickle=True|trust_remote_code=True",
    re.M,
)


def test_no_pickle_or_remote_code_anywhere_in_the_source():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("remoe", "bench", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        if UNSAFE.search(path.read_text())
    ]
    assert offenders == []


def test_the_unsafe_pattern_catches_what_it_should():
    assert UNSAFE.search("x = torch.load(path)") and UNSAFE.search("import pickle\n")
    assert not UNSAFE.search("# no pickle on the wire")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_binds_loopback_unless_told_otherwise(service):
    assert SERVICES[service].model_fields["host"].default == "127.0.0.1"


def test_runtime_dependencies_are_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    loose = [d for d in deps if "==" not in d and not re.search(r">=[\d.]+,<\d+", d)]
    assert loose == [], "pin exactly, or within one major version"
