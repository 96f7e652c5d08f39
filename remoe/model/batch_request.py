"""What the batch engine is given and tells: its settings, one request's state in the batch, how a request ends
early, and the observer of its steps."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Protocol

import torch

from remoe.model.activations import ActivationRecorder
from remoe.model.generation import GenerationTrace, SamplingParams
from remoe.transport.request_context import FunctionBill, RequestRows


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_requests: int = 32  # requests in the running batch; later arrivals wait for a free place
    prefill_chunk: int = 256  # prompt tokens prefilled per iteration (a long prompt is split: decode goes on)

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.prefill_chunk < 1:
            raise ValueError(f"max_requests and prefill_chunk must be >= 1, got {self}")


class RequestCancelled(Exception):
    """The request was cancelled (its client left)."""


class DeadlinePassed(Exception):
    """The request's deadline passed while it was waiting or running."""


@dataclass(eq=False)
class BatchRequest:
    """One request's state in the batch: what it asked for, and what the steps made of it so far."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    eos_token_ids: set[int]
    recorder: ActivationRecorder | None = None
    deadline: float | None = None  # time.time() seconds
    routing: object | None = None  # its compiled plan (dispatch.executor.Routing); None = the default
    functions: FunctionBill = field(default_factory=FunctionBill)  # what its functions billed it
    trace: GenerationTrace = field(default_factory=GenerationTrace)
    trace_context: object = None  # its OpenTelemetry context: a forward's span goes into the first request's trace
    backbone_s: float = 0.0  # its share of the forwards' wall time
    steps: int = 0  # forwards it was in
    shared_steps: int = 0  # of those, forwards with other requests
    peers: int = 0  # other requests summed over its forwards (mean company = peers / steps)
    # Owned by the stepping caller.
    _cache: object = None
    _generator: torch.Generator | None = None
    _prefilled: int = 0
    _out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _cancelled: bool = False

    @property
    def decoding(self) -> bool:
        return self._prefilled == len(self.prompt)

    def rows(self, stop: int) -> RequestRows:
        return RequestRows(stop, self.request_id, self.deadline, self.routing, self.functions, self.recorder)


def past_tokens(request: BatchRequest) -> int:
    """Tokens in a decoding request's cache: its prompt and every generated token but the last."""
    return len(request.prompt) + len(request.trace.tokens) - 1


class BatchObserver(Protocol):
    """Told of each forward and each admission (e.g. the backbone's Prometheus histograms)."""

    def forward(self, requests: int, tokens: int, decode: bool) -> None: ...

    def admitted(self, queue_wait_s: float) -> None: ...
