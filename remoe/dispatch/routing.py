"""A placement compiled for dispatch, the request's own one (its plan) in a context variable, and the billing of
function batches to the requests whose rows they computed."""

from __future__ import annotations

import bisect
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from remoe.experts.placement import Placement
from remoe.transport.request_context import FunctionBill


@dataclass(frozen=True)
class Routing:
    """One placement compiled for dispatch: every expert's destination number, per layer."""

    placement: Placement
    destinations: list[str]
    owner: dict[int, torch.Tensor]  # layer -> [E] destination number of each expert
    memory_mb: dict[str, int]  # function name -> its memory size (for metering)
    owner_lists: dict[int, list[int]] = field(default_factory=dict)  # the same as lists (decode's split)


# A request's own routing (the scheduler's plan) and where its functions' bill accumulates.
current_routing: ContextVar[Routing | None] = ContextVar("remoe_routing", default=None)
current_function_bill: ContextVar[FunctionBill | None] = ContextVar("remoe_function_bill", default=None)
ROUTINGS_KEPT = 256


def bill_functions(function: str, seconds: float, round_trip_s: float, rows: torch.Tensor, batch) -> None:
    """A function's batch billed to the request(s) whose rows it computed, split by their rows in it: `seconds`
    the handler's own time on it (what the function bills), `round_trip_s` the round trip the backbone saw."""
    if batch is None:
        bill = current_function_bill.get()
        if bill is not None:
            bill.add(function, seconds, round_trip_s)
        return
    if len(batch) == 1:
        shares = {0: 1.0}
    else:  # rows are few (a decode step has one per request): counting them in Python beats torch calls
        stops = [group.stop for group in batch]
        counts = Counter(bisect.bisect_right(stops, row) for row in rows.tolist())
        shares = {i: n / len(rows) for i, n in counts.items()}
    for i, share in shares.items():
        bill = batch[i].functions
        if bill is not None:
            bill.add(function, seconds, round_trip_s, share)
