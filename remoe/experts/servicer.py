"""The expert service's gRPC servicer: decodes a batch of routed rows, computes the hosted experts on them, and
answers (also over the co-located data plane). The expert services and the serverless function both serve it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import grpc
import numpy as np
import torch

from remoe.errors import RemoeError
from remoe.experts.executor import ExpertNotHostedError, LocalExpertExecutor
from remoe.proto import expert_pb2, expert_pb2_grpc
from remoe.server.tracing import context_from, tracer
from remoe.transport import tensor_codec
from remoe.transport.local_plane import LocalPlaneServer

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
_FLOAT_WIRE = ("float32", "bfloat16", "float16")


class BatchError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ExpertServicer(expert_pb2_grpc.ExpertServiceServicer):
    def __init__(
        self,
        executor: LocalExpertExecutor,
        name: str,
        kind: str = "service",
        on_batch: Callable[[], None] | None = None,
        cold_start: Callable[[], expert_pb2.ColdStart] | None = None,
    ) -> None:
        self.executor = executor
        self.name = name
        self.kind = kind
        self._on_batch = on_batch  # e.g. a function recording its cold start after the first batch
        self._cold_start = cold_start
        arch = executor.weights.arch
        self._layers = set(arch.layer_indices)
        self._num_experts = arch.num_experts
        self._hidden = arch.hidden_size
        self.local_plane: LocalPlaneServer | None = None  # set by main() when it serves one
        self._recent_ms: deque[float] = deque(maxlen=1024)
        self._batches = 0
        self._compute_s = 0.0
        self._lock = threading.Lock()

    # -- Compute: one stream's batches are answered in order, in this handler's thread (no hand-offs:
    # each costs tens of microseconds). The backbone opens one stream per concurrent request thread, so
    # requests still run in parallel, each on its own stream.
    def Compute(self, request_iterator, context):
        for batch in request_iterator:
            yield self._answer(batch)
            if not context.is_active():
                return

    def _answer(self, batch: expert_pb2.ExpertBatch) -> expert_pb2.ExpertResult:
        if not batch.trace_context:  # an untraced request: no span (even a no-op one costs ~10 µs a batch)
            reply = self._compute(batch)
        else:
            with _tracer.start_as_current_span("expert_batch", context=context_from(batch.trace_context)) as span:
                span.set_attribute("remoe.layer", batch.layer)
                reply = self._compute(batch)
        if self._on_batch is not None:
            self._on_batch()
        return reply

    def _compute(self, batch: expert_pb2.ExpertBatch) -> expert_pb2.ExpertResult:
        start = time.perf_counter()
        try:
            if batch.deadline_unix_s and time.time() > batch.deadline_unix_s:
                raise BatchError(grpc.StatusCode.DEADLINE_EXCEEDED, "batch arrived after its deadline")
            hidden, index, weights = self._decode(batch)
            output = self.executor.compute(batch.layer, hidden, index, weights, guest=batch.guest)
            reply = expert_pb2.ExpertResult(seq=batch.seq, output=tensor_codec.encode(output))
        except BatchError as e:
            reply = expert_pb2.ExpertResult(seq=batch.seq, status_code=e.code.value[0], error=str(e))
        except ExpertNotHostedError as e:
            code = grpc.StatusCode.FAILED_PRECONDITION
            reply = expert_pb2.ExpertResult(seq=batch.seq, status_code=code.value[0], error=f"{self.name}: {e}")
        except RemoeError as e:  # e.g. a corrupt expert file or a budget too small for one expert
            code = grpc.StatusCode.INTERNAL
            reply = expert_pb2.ExpertResult(seq=batch.seq, status_code=code.value[0], error=f"{self.name}: {e}")
        except Exception as e:  # never let one batch take the stream down
            log.exception("batch %d (request %s) failed", batch.seq, batch.request_id)
            code = grpc.StatusCode.INTERNAL
            reply = expert_pb2.ExpertResult(seq=batch.seq, status_code=code.value[0], error=f"{self.name}: {e!r}")
        elapsed = time.perf_counter() - start
        reply.compute_s = elapsed
        with self._lock:
            self._batches += 1
            self._compute_s += elapsed
            self._recent_ms.append(elapsed * 1e3)
        return reply

    def _decode(self, batch: expert_pb2.ExpertBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if batch.layer not in self._layers:
            raise BatchError(grpc.StatusCode.INVALID_ARGUMENT, f"layer {batch.layer} has no routed experts")
        try:
            hidden = tensor_codec.decode(batch.hidden_states, "hidden_states", dtype=_FLOAT_WIRE, rank=2)
            index = tensor_codec.decode(batch.top_k_index, "top_k_index", dtype="int64", rank=2)
            weights = tensor_codec.decode(batch.top_k_weights, "top_k_weights", dtype=_FLOAT_WIRE, rank=2)
        except tensor_codec.TensorDecodeError as e:
            raise BatchError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if hidden.shape[1] != self._hidden:
            raise BatchError(grpc.StatusCode.INVALID_ARGUMENT, f"hidden size {hidden.shape[1]} != {self._hidden}")
        if index.shape != weights.shape or index.shape[0] != hidden.shape[0]:
            raise BatchError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"inconsistent shapes: hidden {list(hidden.shape)}, index {list(index.shape)}, "
                f"weights {list(weights.shape)}",
            )
        if index.numel() and not -1 <= (bounds := index.aminmax()).min <= bounds.max < self._num_experts:
            raise BatchError(grpc.StatusCode.INVALID_ARGUMENT, f"expert ids outside [-1, {self._num_experts})")
        return hidden, index, weights

    # -- Control and introspection.
    def Load(self, request, context):
        before = self.executor.stats.bytes_loaded
        start = time.perf_counter()
        try:
            for ref in request.experts:
                self.executor.preload(ref.layer, ref.expert)
        except (ExpertNotHostedError, KeyError) as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except RemoeError as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        return expert_pb2.LoadReply(
            bytes_loaded=self.executor.stats.bytes_loaded - before, load_s=time.perf_counter() - start
        )

    def Unload(self, request, context):
        unloaded = sum(self.executor.cache.evict((r.layer, r.expert)) for r in request.experts)
        return expert_pb2.UnloadReply(unloaded=unloaded)

    def batch_counts(self) -> tuple[int, float]:
        """(batches computed, seconds spent computing them), for the metrics."""
        with self._lock:
            return self._batches, self._compute_s

    def Stats(self, request, context):
        stats = self.executor.stats
        with self._lock:
            recent = np.array(self._recent_ms) if self._recent_ms else np.zeros(1)
            batches, compute_s = self._batches, self._compute_s
        return expert_pb2.StatsReply(
            name=self.name,
            hosted=[expert_pb2.ExpertRef(layer=lyr, expert=e) for lyr, e in sorted(self.executor.hosted)],
            resident=[expert_pb2.ExpertRef(layer=lyr, expert=e) for lyr, e in self.executor.cache.resident()],
            resident_bytes=self.executor.cache.resident_bytes,
            budget_bytes=self.executor.cache.budget_bytes or 0,
            hits=stats.hits,
            loads=stats.loads,
            bytes_loaded=stats.bytes_loaded,
            evictions=stats.evictions,
            load_s=stats.load_seconds,
            batches=batches,
            compute_s=compute_s,
            recent_batch_ms_p50=float(np.percentile(recent, 50)),
            recent_batch_ms_p99=float(np.percentile(recent, 99)),
            kind=self.kind,
            cold_start=self._cold_start() if self._cold_start is not None else None,
            local_plane=str(self.local_plane.path) if self.local_plane is not None else "",
            local_plane_batches=self.local_plane.batches if self.local_plane is not None else 0,
        )
