"""Open a Hugging Face checkpoint directory: config.json plus one or more safetensors files.

Only headers are read here; tensors are read on demand, one key (or one slice of a key) at a time: the backbone's
through safetensors' memory map (its pages are the weights, used in place), an expert's with pread into memory of
its own (`read_owned`), since it is copied into its kernel's layout and the mapped pages would be held twice.
"""

from __future__ import annotations

import json
import os
import struct
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

from remoe.checkpoint.owned_reads import pread_tensor
from remoe.errors import CheckpointError, MissingWeightError

INDEX_FILE = "model.safetensors.index.json"
# safetensors stores an 8-byte little-endian header length, then the JSON header, then the data.
_HEADER_LEN_BYTES = 8
_MAX_HEADER_BYTES = 100 * 1024 * 1024

if TYPE_CHECKING:  # transformers is imported only to load a config: a lean function reads files without it
    from transformers import PretrainedConfig


def read_safetensors_header(path: Path) -> dict:
    """Parse a safetensors header without touching tensor data; raise CheckpointError naming the file."""
    return _read_header(path)[0]


def _read_header(path: Path) -> tuple[dict, int]:
    """(header, the file offset where tensor data begins)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(_HEADER_LEN_BYTES)
            if len(raw_len) != _HEADER_LEN_BYTES:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(_MAX_HEADER_BYTES, size - _HEADER_LEN_BYTES):
                raise CheckpointError(f"{path}: corrupt safetensors header (claims {header_len} bytes)")
            header = json.loads(f.read(header_len))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    data_bytes = size - _HEADER_LEN_BYTES - header_len
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if not (0 <= begin <= end <= data_bytes):
            raise CheckpointError(f"{path}: tensor {key!r} lies outside the file (truncated or corrupt)")
    return header, _HEADER_LEN_BYTES + header_len


@dataclass(frozen=True, slots=True)
class TensorInfo:
    file: Path
    dtype: str  # safetensors dtype name, e.g. "F32", "BF16"
    shape: tuple[int, ...]
    nbytes: int
    offset: int | None = None  # where its bytes begin in `file`; None: a logical tensor (read by a subclass)


@dataclass
class Checkpoint:
    """A checkpoint directory with an index from tensor key to where and what it is."""

    path: Path
    config: PretrainedConfig | None  # None: read without transformers (remoe/functions/lean_weights.py)
    tensors: dict[str, TensorInfo]
    _handles: dict[Path, object] = field(default_factory=dict, repr=False)
    _fds: dict[Path, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        weakref.finalize(self, _close_fds, self._fds)  # the files read_owned opened close with the checkpoint

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint directory not found")
        config = load_config(path)
        return cls(path=path, config=config, tensors=_index_tensors(path))

    @classmethod
    def from_files(cls, path: Path, config: PretrainedConfig | None, files: list[Path]) -> Checkpoint:
        """A checkpoint made of named files (a `remoe split` directory); keys must be unique across them."""
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{file}: missing")
            tensors.update(_file_tensors(file))
        return cls(path=path, config=config, tensors=tensors)

    @property
    def files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})

    def keys(self) -> list[str]:
        return list(self.tensors)

    def info(self, key: str) -> TensorInfo:
        try:
            return self.tensors[key]
        except KeyError:
            raise MissingWeightError(f"{self.path}: tensor {key!r} is not in any safetensors file") from None

    def file_of(self, key: str) -> Path:
        return self.info(key).file

    def _handle(self, file: Path):
        handle = self._handles.get(file)
        if handle is None:
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{file}: cannot open as safetensors ({e})") from e
            self._handles[file] = handle
        return handle

    def read(self, key: str) -> torch.Tensor:
        file = self.file_of(key)
        try:
            return self._handle(file).get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{file}: cannot read tensor {key!r} ({e})") from e

    def read_row(self, key: str, index: int) -> torch.Tensor:
        """Read `tensor[index]` only: one expert of a fused [E, ...] tensor, without the others' bytes."""
        file = self.file_of(key)
        try:
            return self._handle(file).get_slice(key)[index]
        except SafetensorError as e:
            raise CheckpointError(f"{file}: cannot read {key!r}[{index}] ({e})") from e

    def release_maps(self) -> None:
        """Drop safetensors' handles: a file's map then lives only as long as a tensor still uses it in place, so
        a backbone copied to its device or dtype stops holding the file's pages. A later read reopens the file."""
        self._handles.clear()

    def read_owned(self, key: str) -> torch.Tensor:
        """`key` in fresh anonymous memory (pread), leaving none of the file mapped in this process."""
        return self._read_owned(key, self.info(key), None)

    def read_row_owned(self, key: str, index: int) -> torch.Tensor:
        """`tensor[index]` of an [E, ...] tensor, as read_owned: one expert's bytes only."""
        return self._read_owned(key, self.info(key), index)

    def _read_owned(self, key: str, info: TensorInfo, index: int | None) -> torch.Tensor:
        if index is None:
            return self._pread(key, info, 0, info.nbytes, info.shape)
        if not info.shape or not 0 <= index < info.shape[0]:
            raise CheckpointError(f"{info.file}: {key!r} {list(info.shape)} has no row {index}")
        row_bytes = info.nbytes // info.shape[0]
        return self._pread(key, info, index * row_bytes, row_bytes, info.shape[1:])

    def _pread(self, key: str, info: TensorInfo, start: int, nbytes: int, shape: tuple[int, ...]) -> torch.Tensor:
        if info.offset is None:
            raise CheckpointError(f"{info.file}: {key!r} is not stored as is (a logical tensor has no bytes to read)")
        fd = self._fds.get(info.file)
        if fd is None:
            try:
                fd = os.open(info.file, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise CheckpointError(f"{info.file}: cannot open ({e.strerror})") from e
            kept = self._fds.setdefault(info.file, fd)  # two threads opened it at once: keep one fd
            if kept != fd:
                os.close(fd)
            fd = kept
        return pread_tensor(fd, info.file, info.offset + start, nbytes, info.dtype, shape)


def _close_fds(fds: dict[Path, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def load_config(path: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: config.json not found (is this a Hugging Face checkpoint directory?)")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path / 'config.json'}: cannot load the model config ({e})") from e


def _file_tensors(file: Path) -> dict[str, TensorInfo]:
    out = {}
    header, data_start = _read_header(file)
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[key] = TensorInfo(file, info["dtype"], tuple(info["shape"]), end - begin, data_start + begin)
    return out


def _index_tensors(path: Path) -> dict[str, TensorInfo]:
    index_path = path / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: corrupt index ({e})") from e
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (path / name).is_file():
                raise CheckpointError(f"{index_path}: names shard {name!r}, which is missing from {path}")
        tensors: dict[str, TensorInfo] = {}
        for name in files:
            tensors.update(_file_tensors(path / name))
        for key, name in weight_map.items():
            if key not in tensors or tensors[key].file != path / name:
                raise CheckpointError(f"{index_path}: tensor {key!r} is not in {name} as the index says")
        return tensors
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files (only safetensors checkpoints are supported)")
    tensors = {}
    for file in files:
        for key, info in _file_tensors(file).items():
            if key in tensors:
                raise CheckpointError(f"{path}: tensor {key!r} is in both {tensors[key].file.name} and {file.name}")
            tensors[key] = info
    return tensors
