"""The `remoe` command as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from remoe.checkpoint.manifest import Manifest

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI


def remoe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remoe.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    out = remoe("--help")
    assert out.returncode == 0
    for command in ("tiny-model", "split", "inspect", "verify", "generate"):
        assert command in out.stdout


def test_tiny_model_split_and_generate_end_to_end(tmp_path):
    ckpt, split = tmp_path / "m", tmp_path / "m-split"
    made = remoe("tiny-model", "--arch", "olmoe", "--layers", "2", "--experts", "4", "--top-k", "2", "--out", str(ckpt))
    assert made.returncode == 0, made.stderr
    assert (ckpt / "tokenizer.json").is_file() and (ckpt / "config.json").is_file()

    done = remoe("split", str(ckpt), "--out", str(split), "--quiet")
    assert done.returncode == 0, done.stderr
    assert Manifest.load(split).num_experts == 4

    gens = [
        remoe("generate", "--model", str(d), "--max-new-tokens", "5", "--json", "hello there") for d in (ckpt, split)
    ]
    for g in gens:
        assert g.returncode == 0, g.stderr
    results = [json.loads(g.stdout) for g in gens]
    assert results[0]["token_ids"] == results[1]["token_ids"]
    assert len(results[0]["token_ids"]) == 5
    assert results[0]["expert_cache"]["loads"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["split", "/nonexistent/ckpt", "--out", "/nonexistent/remoe-out"], "checkpoint directory not found"),
        (["generate", "--model", "/nonexistent/ckpt", "hi"], "checkpoint directory not found"),
        (
            ["tiny-model", "--arch", "mixtral", "--top-k", "9", "--experts", "4", "--out", "/nonexistent/remoe-out"],
            "--top-k",
        ),
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


def test_verify_passes_on_a_faithful_split_and_fails_on_a_tampered_one(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt, split = tmp_path / "m", tmp_path / "m-split"
    assert remoe("tiny-model", "--arch", "mixtral", "--layers", "2", "--out", str(ckpt)).returncode == 0
    assert remoe("split", str(ckpt), "--out", str(split), "-q").returncode == 0

    ok = remoe("verify", str(ckpt), "--split", str(split))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    support, verdict = ok.stdout.splitlines()[:2]
    assert support.startswith("support: mixtral is token-exact in the support survey")
    assert verdict.startswith("OK: compared 32 greedy tokens (EOS ignored): all equal"), verdict  # the default

    shard = split / "experts" / "layer_001.safetensors"
    tensors = load_file(str(shard))
    tensors = {k: (t * 3 if ".experts." in k else t) for k, t in tensors.items()}
    save_file(tensors, str(shard), metadata={"format": "pt"})
    bad = remoe("verify", str(ckpt), "--split", str(split), "--tokens", "8")
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[1].startswith("MISMATCH: compared 8 greedy tokens")
