"""The metering ledger: one record per request (predicted and measured time, memory and cost of every part),
appended to a Redis stream exactly once per request id.

Exactly once: a Lua script sets the request's dedup key and appends in one atomic step, so a retried write (the
same request id) appends nothing. While Redis is unreachable, records wait in a bounded in-memory buffer and
are flushed, oldest first, by the next write that reaches Redis (or `flush()`); only an overflowing buffer
drops records, and it counts them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields

from remoe.constants import LEDGER_STREAM

log = logging.getLogger(__name__)

SEEN_PREFIX = f"{LEDGER_STREAM}:seen:"
SEEN_TTL_S = 7 * 24 * 3600
_APPEND_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], '*', 'record', ARGV[1])
end
return false
"""


@dataclass(slots=True)
class FunctionUse:
    memory_mb: int
    seconds: float  # billed duration: the function's handler time on this request's batches
    cost: float
    calls: float = 0.0  # invocations for this request's batches (its share of shared ones), for a per-request fee
    round_trip_s: float = 0.0  # the same batches' round trips as the backbone saw them (not billed)


@dataclass(slots=True)
class MeterRecord:
    request_id: str
    model: str
    n_in: int
    n_out: int
    measured_ttft_s: float
    measured_tpot_s: float
    main_gpu_gb: float
    main_cpu_gb: float
    main_s: float  # the main model's busy time for this request: its share of the batched forwards it was in
    # (Usage.backbone_s), or TTFT + (n_out - 1) TPOT from a backbone that does not batch
    cost_main: float
    cost_remote: float
    functions: dict[str, FunctionUse] = field(default_factory=dict)
    predicted_ttft_s: float = 0.0  # 0 when no plan was made
    predicted_tpot_s: float = 0.0
    predicted_cost: float = 0.0  # predicted_cost_main + predicted_cost_remote
    predicted_cost_main: float = 0.0  # the plan's main model: its memory x its predicted busy time
    predicted_cost_remote: float = 0.0  # the plan's functions: their memory x their predicted compute time
    # The memory the plan sized each remote layer's functions at (MB, one per layer with remote experts): beside
    # `functions`' billed sizes it says whether a bill above the prediction is in the memory or in the time.
    planned_function_mb: list[int] = field(default_factory=list)
    plan_signature: str = ""
    plan_feasible: bool = True
    forecast_source: str = ""
    forecast_js: float = 0.0
    cpu_gb_s: float = 0.0
    gpu_gb_s: float = 0.0
    shared_steps: int = 0  # forwards this request shared with other requests
    mean_step_requests: float = 0.0  # requests per forward it was in, on average (0: not batched)
    unix_s: float = field(default_factory=time.time)

    @property
    def cost(self) -> float:
        return self.cost_main + self.cost_remote

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> MeterRecord:
        # A stream outlives versions: fields a newer gateway added are skipped, ones an older one lacked default.
        raw = _known(json.loads(text), _RECORD_FIELDS)
        uses = raw.get("functions", {}).items()
        raw["functions"] = {name: FunctionUse(**_known(use, _USE_FIELDS)) for name, use in uses}
        return cls(**raw)


def _known(raw: dict, names: frozenset[str]) -> dict:
    return {k: v for k, v in raw.items() if k in names}


_RECORD_FIELDS = frozenset(f.name for f in fields(MeterRecord))
_USE_FIELDS = frozenset(f.name for f in fields(FunctionUse))


def meter(
    request_id: str,
    model: str,
    usage,
    main_gpu_gb: float,
    main_cpu_gb: float,
    cpu_gb_s: float,
    gpu_gb_s: float,
    plan=None,
) -> MeterRecord:
    """A record from the backbone's usage (measured) and the scheduler's plan reply (predicted, may be None)."""
    n_out = int(usage.completion_tokens)
    main_s = float(usage.backbone_s) or float(usage.ttft_s) + max(n_out - 1, 0) * float(usage.tpot_s)
    functions = {
        name: FunctionUse(
            int(usage.function_memory_mb.get(name, 0)),
            float(seconds),
            cpu_gb_s * usage.function_memory_mb.get(name, 0) / 1024 * float(seconds),
            float(usage.function_calls.get(name, 0.0)),
            float(usage.function_round_trip_seconds.get(name, seconds)),
        )
        for name, seconds in usage.function_seconds.items()
    }
    record = MeterRecord(
        request_id=request_id,
        model=model,
        n_in=int(usage.prompt_tokens),
        n_out=n_out,
        measured_ttft_s=float(usage.ttft_s),
        measured_tpot_s=float(usage.tpot_s),
        main_gpu_gb=main_gpu_gb,
        main_cpu_gb=main_cpu_gb,
        main_s=main_s,
        cost_main=main_s * (gpu_gb_s * main_gpu_gb + cpu_gb_s * main_cpu_gb),
        cost_remote=sum(f.cost for f in functions.values()),
        functions=functions,
        forecast_source=usage.forecast_source,
        forecast_js=float(usage.forecast_js),
        cpu_gb_s=cpu_gb_s,
        gpu_gb_s=gpu_gb_s,
        shared_steps=int(usage.shared_steps),
        mean_step_requests=float(usage.mean_step_requests),
    )
    if plan is not None:
        record.predicted_ttft_s, record.predicted_tpot_s = plan.ttft_s, plan.tpot_s
        record.predicted_cost_main, record.predicted_cost_remote = plan.cost_main, plan.cost_remote
        record.predicted_cost = plan.cost_main + plan.cost_remote
        record.plan_signature, record.plan_feasible = plan.signature, plan.feasible
        record.planned_function_mb = [round(layer.memory_gb * 1024) for layer in plan.layers if layer.remote]
    return record


class Ledger:
    def __init__(self, redis_url: str, stream: str = LEDGER_STREAM, buffer: int = 10_000) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.stream = stream
        self._append = self.client.register_script(_APPEND_ONCE)
        self._pending: deque[MeterRecord] = deque(maxlen=buffer)
        self._lock = threading.Lock()
        self.dropped = 0  # records lost to a full buffer (Redis down for a long time)
        self.duplicates = 0  # writes refused because the request id was already metered

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def write(self, record: MeterRecord) -> None:
        """Never raises: an unreachable Redis buffers the record."""
        with self._lock:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
                log.error("metering buffer full (%d): dropping the oldest record", self._pending.maxlen)
            self._pending.append(record)
        self.flush()

    def flush(self) -> int:
        """Append buffered records in order; returns how many are left (0 when Redis took them all)."""
        import redis

        with self._lock:
            while self._pending:
                record = self._pending[0]
                try:
                    added = self._append(
                        keys=[SEEN_PREFIX + record.request_id, self.stream], args=[record.to_json(), SEEN_TTL_S]
                    )
                except redis.RedisError as e:
                    log.warning("metering: Redis unreachable (%s); %d record(s) buffered", e, len(self._pending))
                    break
                if not added:
                    self.duplicates += 1
                self._pending.popleft()
            return len(self._pending)

    def read(self, count: int | None = None) -> list[MeterRecord]:
        entries = self.client.xrange(self.stream, count=count)
        return [MeterRecord.from_json(fields[b"record"]) for _, fields in entries]


def summarize(records: list[MeterRecord]) -> dict:
    """Totals and means over a ledger: cost by part, predicted vs measured."""
    if not records:
        return {"requests": 0}
    n = len(records)
    planned = [r for r in records if r.predicted_ttft_s > 0]

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    return {
        "requests": n,
        "cost_total": sum(r.cost for r in records),
        "cost_main": sum(r.cost_main for r in records),
        "cost_remote": sum(r.cost_remote for r in records),
        "cost_per_request": mean(r.cost for r in records),
        "predicted_cost_per_request": mean(r.predicted_cost for r in planned),
        "measured_ttft_s": mean(r.measured_ttft_s for r in records),
        "measured_tpot_s": mean(r.measured_tpot_s for r in records),
        "predicted_ttft_s": mean(r.predicted_ttft_s for r in planned),
        "predicted_tpot_s": mean(r.predicted_tpot_s for r in planned),
        "planned_requests": len(planned),
        "infeasible_plans": sum(1 for r in planned if not r.plan_feasible),
        "function_seconds": sum(f.seconds for r in records for f in r.functions.values()),
        "function_round_trip_seconds": sum(f.round_trip_s for r in records for f in r.functions.values()),
        "tokens_out": sum(r.n_out for r in records),
    }
