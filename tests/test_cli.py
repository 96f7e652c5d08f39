"""The `remoe` command as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from remoe.model.manifest import Manifest


def remoe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remoe.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    out = remoe("--help")
    assert out.returncode == 0
    for command in ("tiny-model", "split", "inspect", "generate"):
        assert command in out.stdout


def test_tiny_model_split_and_generate_end_to_end(tmp_path):
    ckpt, split = tmp_path / "m", tmp_path / "m-split"
    made = remoe("tiny-model", "--arch", "olmoe", "--layers", "2", "--experts", "4", "--top-k", "2", "--out", str(ckpt))
    assert made.returncode == 0, made.stderr
    assert (ckpt / "tokenizer.json").is_file() and (ckpt / "config.json").is_file()

    done = remoe("split", str(ckpt), "--out", str(split), "--quiet")
    assert done.returncode == 0, done.stderr
    assert Manifest.load(split).num_experts == 4

    gens = [remoe("generate", "--model", str(d), "--max-new-tokens", "5", "--json", "hello there") for d in (ckpt, split)]
    for g in gens:
        assert g.returncode == 0, g.stderr
    results = [json.loads(g.stdout) for g in gens]
    assert results[0]["token_ids"] == results[1]["token_ids"]
    assert len(results[0]["token_ids"]) == 5
    assert results[0]["expert_cache"]["loads"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["split", "/nonexistent/ckpt", "--out", "/tmp/x"], "checkpoint directory not found"),
        (["generate", "--model", "/nonexistent/ckpt", "hi"], "checkpoint directory not found"),
        (["tiny-model", "--arch", "mixtral", "--top-k", "9", "--experts", "4", "--out", "/tmp/x"], "--top-k"),
    ],
)
def test_user_errors_exit_2_with_a_message_not_a_traceback(args, message):
    out = remoe(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_architecture_is_rejected_by_argparse():
    out = remoe("tiny-model", "--arch", "llama", "--out", "/tmp/x")
    assert out.returncode == 2 and "invalid choice" in out.stderr
