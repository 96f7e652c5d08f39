"""DispatchingExecutor: fans each MoE layer out to the destinations that host its routed experts.

One message per remote destination per layer, all in flight at once; the backbone's own local experts
(if any) are computed while the remote ones work; the weighted partial sums are added.
T = tokens, K = top-k, H = hidden size.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
import torch
from opentelemetry import propagate, trace

from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.placement import LOCAL, Placement
from remoe.proto import expert_pb2
from remoe.transport import tensor_codec
from remoe.transport.expert_stream import ExpertStream, RemoteExpertError
from remoe.transport.request_context import current_deadline, current_request_id, remaining, status_from_int

_tracer = trace.get_tracer(__name__)
# Without a request deadline, a destination that accepted a batch still gets this long to answer.
DEFAULT_BATCH_TIMEOUT_S = 300.0


class DispatchingExecutor:
    def __init__(
        self,
        placement: Placement,
        moe_layers: list[int],
        num_experts: int,
        local: LocalExpertExecutor | None = None,
    ) -> None:
        placement.check_covers(moe_layers, num_experts)
        if LOCAL in placement.destinations and local is None:
            raise ValueError("the placement puts experts on 'local' but no local executor was given")
        self.placement = placement
        self.destinations = list(placement.destinations)
        self.local = local
        self.streams = {d: ExpertStream(d) for d in self.destinations if d != LOCAL}
        owners = placement.owner_table()
        # Per layer: destination number of every expert, so a slot's destination is one gather away.
        self._owner = {
            layer: torch.tensor([self.destinations.index(owners[(layer, e)]) for e in range(num_experts)])
            for layer in moe_layers
        }
        self.fanout_s: deque[float] = deque(maxlen=2048)  # wall time of recent remote fan-outs

    def compute(
        self, layer: int, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        with _tracer.start_as_current_span("expert_fanout") as span:
            span.set_attribute("remoe.layer", layer)
            return self._compute(layer, hidden_states, top_k_index, top_k_weights)

    def _compute(
        self, layer: int, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        start = time.perf_counter()
        hidden = hidden_states.to("cpu")  # [T, H]
        index = top_k_index.to("cpu")  # [T, K]
        weights = top_k_weights.to("cpu", hidden.dtype)  # [T, K]
        dest_of_slot = self._owner[layer][index]  # [T, K]
        out = torch.zeros_like(hidden)  # [T, H]
        in_flight, local_job = [], None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # empty unless tracing is on
        for number, dest in enumerate(self.destinations):
            mine = dest_of_slot == number  # [T, K]
            if not bool(mine.any()):
                continue
            rows = mine.any(dim=1).nonzero().flatten()  # [N]
            sub_index = torch.where(mine, index, -1)[rows]  # [N, K]
            sub_weights = torch.where(mine, weights, 0.0)[rows]  # [N, K]
            if dest == LOCAL:
                local_job = (rows, sub_index, sub_weights)
                continue
            batch = expert_pb2.ExpertBatch(
                request_id=current_request_id.get(),
                layer=layer,
                hidden_states=tensor_codec.encode(hidden[rows]),
                top_k_index=tensor_codec.encode(sub_index),
                top_k_weights=tensor_codec.encode(sub_weights),
                deadline_unix_s=current_deadline.get() or 0.0,
                trace_context=carrier,
            )
            seq, future = self.streams[dest].submit(batch)
            in_flight.append((dest, rows, seq, future))
        if local_job is not None:
            rows, sub_index, sub_weights = local_job
            out.index_add_(0, rows, self.local.compute(layer, hidden[rows], sub_index, sub_weights))
        for dest, rows, seq, future in in_flight:
            out.index_add_(0, rows, self._await(dest, rows, seq, future, hidden))
        if in_flight:
            self.fanout_s.append(time.perf_counter() - start)
        return out.to(hidden_states.device, hidden_states.dtype)

    def _await(self, dest: str, rows: torch.Tensor, seq: int, future, hidden: torch.Tensor) -> torch.Tensor:
        try:
            result = future.result(timeout=remaining(DEFAULT_BATCH_TIMEOUT_S))
        except FutureTimeout:
            self.streams[dest].forget(seq)
            raise RemoteExpertError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"expert service {dest} did not answer before the deadline"
            ) from None
        if result.status_code != 0:
            raise RemoteExpertError(status_from_int(result.status_code), f"expert service {dest}: {result.error}")
        try:
            wire = tensor_codec.wire_name(hidden.dtype)
            partial = tensor_codec.decode(result.output, f"output from {dest}", dtype=wire, rank=2)
        except tensor_codec.TensorDecodeError as e:
            raise RemoteExpertError(grpc.StatusCode.INTERNAL, str(e)) from None
        if tuple(partial.shape) != (len(rows), hidden.shape[1]):
            raise RemoteExpertError(
                grpc.StatusCode.INTERNAL, f"expert service {dest} answered shape {list(partial.shape)}"
            )
        return partial

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
