"""A batch in flight to one destination, and where one fan-out's wall time went."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from remoe.proto import expert_pb2
from remoe.transport.expert_stream import Pending


@dataclass
class InFlight:
    dest: str
    rows: torch.Tensor  # [N] token rows this destination computes
    batch: expert_pb2.ExpertBatch
    address: str
    pending: Pending
    sent_s: float = 0.0
    done_s: float = 0.0  # set when the caller has read the answer
    server_s: float = 0.0  # the destination's own time on it (ExpertResult.compute_s)


@dataclass(frozen=True, slots=True)
class FanoutSplit:
    """Where one remote fan-out's wall time went, in seconds."""

    client_s: float  # routing rows to destinations, encoding, sending
    local_s: float  # this process's own experts, computed while the remote ones work
    waiting_s: float  # from then until every answer was read and added
    server_s: float  # the slowest destination's own time on its batch (inside waiting, unless local ran longer)
