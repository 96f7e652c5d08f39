"""What a process holds is what it needs: experts read into memory of their own (the same values as safetensors'
mapped read) and held once, a copied backbone without its file's pages, a closed engine without its experts."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from safetensors.torch import save_file

from remoe.checkpoint.files import Checkpoint, TensorInfo
from remoe.checkpoint.weights import open_weights
from remoe.errors import CheckpointError
from remoe.experts.executor import LocalExpertExecutor
from remoe.model.split import split_checkpoint
from remoe.model.tiny import TinySpec, make_tiny_model

_TENSORS = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(4, 2, 3).to(torch.bfloat16),
    "f16": torch.randn(7).to(torch.float16),
    "i8": torch.randint(-128, 127, (2, 9), dtype=torch.int8),
    "u8": torch.randint(0, 255, (5, 3), dtype=torch.uint8),
    "i64": torch.arange(6).reshape(3, 2),
    "flag": torch.tensor([True, False, True]),
    "fp8": torch.randn(4, 4).to(torch.float8_e4m3fn),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 4),
}


@pytest.fixture
def stored(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    file = tmp_path / "model.safetensors"
    save_file(_TENSORS, str(file))
    return Checkpoint.from_files(tmp_path, None, [file])


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def test_owned_reads_equal_the_mapped_reads_for_every_dtype(stored):
    for key, expected in _TENSORS.items():
        got = stored.read_owned(key)
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert torch.equal(_bytes(got), _bytes(expected)) and torch.equal(_bytes(got), _bytes(stored.read(key))), key
        for row in range(expected.shape[0] if expected.dim() else 0):
            assert torch.equal(_bytes(stored.read_row_owned(key, row)), _bytes(expected[row])), (key, row)


def test_a_row_outside_the_tensor_or_a_file_cut_short_is_a_checkpoint_error(stored):
    with pytest.raises(CheckpointError, match=r"'f32' \[3, 5\] has no row 3"):
        stored.read_row_owned("f32", 3)
    with pytest.raises(CheckpointError, match="has no row"):
        stored.read_row_owned("scalar", 0)
    stored.read_owned("bf16")  # the file is open now; then it is cut short under the reader
    file = stored.info("bf16").file
    os.truncate(file, stored.info("f32").offset)
    with pytest.raises(CheckpointError, match="truncated since it was opened"):
        stored.read_owned("bf16")


def test_a_tensor_not_stored_as_is_has_no_bytes_to_read(stored):
    stored.tensors["logical"] = TensorInfo(stored.info("f32").file, "F32", (2,), 8)
    with pytest.raises(CheckpointError, match="not stored as is"):
        stored.read_owned("logical")


def _resident_mib() -> tuple[float, float]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
    return values["RssAnon"], values["RssFile"]


@pytest.mark.parametrize("kernel", ["auto", "class"])  # class: the reference path keeps the read tensors as they are
@pytest.mark.parametrize("source", ["checkpoint", "split"])
def test_loaded_experts_are_held_once(tmp_path, source, kernel):
    """Through the file map every loaded expert stayed resident twice (its prepared copy + its mapped pages)."""
    path = make_tiny_model(TinySpec("mixtral", layers=1, experts=8, hidden=512), tmp_path / "ckpt", layout="fused")
    if source == "split":
        path = split_checkpoint(path, tmp_path / "split", progress=False) and tmp_path / "split"
    executor = LocalExpertExecutor(open_weights(path), dtype=torch.float32, kernel=kernel)
    layer = executor.weights.arch.layer_indices[0]
    executor.preload(layer, 0)  # the kernel's one-time set-up (a build, its library mapped) is not an expert
    anon, backed = _resident_mib()
    for expert in range(1, 8):
        executor.preload(layer, expert)
    loaded_mib = 7 * executor.cache.resident_bytes / 8 / 2**20  # 7 experts of 6 MiB
    now_anon, now_backed = _resident_mib()
    grown_anon, grown_backed = now_anon - anon, now_backed - backed
    assert grown_backed < 0.1 * loaded_mib, f"{grown_backed:.0f} MiB of the file stayed mapped for {loaded_mib:.0f}"
    assert grown_anon < 1.15 * loaded_mib + 4, f"{grown_anon:.0f} MiB anonymous for {loaded_mib:.0f} MiB of experts"


def test_a_backbone_copied_to_another_dtype_does_not_keep_the_files_pages(tmp_path):
    """Loaded as bfloat16 from a float32 checkpoint (as on an accelerator), the backbone's weights are copies: the
    file's mapped pages they came from were held beside them for as long as the process ran."""
    from remoe.model.backbone import Backbone

    spec = TinySpec("mixtral", layers=2, experts=2, top_k=1, hidden=1024)
    weights = open_weights(make_tiny_model(spec, tmp_path / "ckpt"))
    backbone_mib = weights.backbone_nbytes() / 2**20  # float32 as stored: ~28 MiB
    _, backed = _resident_mib()
    backbone = Backbone(weights, LocalExpertExecutor(weights), device="cpu", dtype=torch.bfloat16)
    grown_backed = _resident_mib()[1] - backed
    assert backbone.param_bytes() < 0.6 * weights.backbone_nbytes()  # bf16 copies, half the stored bytes
    assert grown_backed < 0.2 * backbone_mib, f"{grown_backed:.0f} MiB of {backbone_mib:.0f} MiB stayed mapped"


def test_a_closed_engine_gives_its_experts_memory_back_and_still_serves_the_same_tokens(tmp_path):
    """Dropped, an engine keeps its experts until a full garbage collection (transformers' reference cycles)."""
    from remoe.model.engine import LocalEngine

    path = make_tiny_model(TinySpec("mixtral", layers=1, experts=8, hidden=512), tmp_path / "ckpt")
    with LocalEngine(path) as engine:
        first = engine.generate(token_ids=[5, 6, 7], max_new_tokens=4, stop_on_eos=False).token_ids
        for expert in range(8):
            engine.executor.preload(engine.backbone.arch.layer_indices[0], expert)
        loaded_mib = engine.executor.cache.resident_bytes / 2**20  # 8 experts of 6 MiB
        anon, _ = _resident_mib()
        engine.close()
        freed = anon - _resident_mib()[0]
        assert freed > 0.8 * loaded_mib, f"{freed:.0f} of {loaded_mib:.0f} MiB given back"
        assert engine.executor.cache.resident_bytes == 0
        assert engine.generate(token_ids=[5, 6, 7], max_new_tokens=4, stop_on_eos=False).token_ids == first


def test_the_files_an_owned_read_opened_close_with_the_checkpoint(stored):
    ckpt = Checkpoint.from_files(stored.path, None, stored.files)  # one the fixture does not keep alive
    ckpt.read_owned("f32")
    (fd,) = ckpt._fds.values()
    os.fstat(fd)  # open while the checkpoint lives
    del ckpt
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)
