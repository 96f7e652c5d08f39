"""The expert function: a small gRPC server (ExpertService over h2c on $PORT) hosting a few cold experts.

It loads each hosted expert lazily at first use (only that expert's bytes), reports its cold-start
breakdown in Stats and as a trace span, and refuses to start, with a clear message, when its memory size
cannot hold its experts. Configured by environment variables; see remoe/functions/config.py.

    REMOE_MODEL_DIR=/models/m REMOE_FUNCTION_EXPERTS="1:3,5;2:0" PORT=8080 python -m remoe.functions.expert
"""

from __future__ import annotations

import time

_STARTED = time.time()  # first thing: before any heavy import, so imports can be timed

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

EXIT_BAD_CONFIG = 2
EXIT_TOO_LITTLE_MEMORY = 3


def process_start_seconds(spawned_at: float | None, started_at: float = _STARTED) -> float:
    """Seconds from the platform's start request (or the process's creation) to `started_at`: interpreter start-up,
    or the fork from the runtime template (with any wait for the template to be ready)."""
    if spawned_at is not None:
        return max(0.0, started_at - spawned_at)
    from remoe.server.startup import process_started_at

    created = process_started_at()
    return max(0.0, started_at - created) if created is not None else 0.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ColdStartClock:
    """Fills in the cold-start breakdown; completes it when the first batch has been answered."""

    def __init__(self, process_start_s: float) -> None:
        self.process_start_s = process_start_s
        self.imports_s = 0.0
        self.init_s = 0.0
        self.ready_at = 0.0
        self.first_load_s = 0.0
        self.first_compute_s = 0.0
        self.complete = False
        self._lock = threading.Lock()
        self.executor = None

    def after_batch(self) -> None:
        with self._lock:
            if self.complete:
                return
            self.complete = True
            self.first_compute_s = time.time() - self.ready_at
            self.first_load_s = self.executor.stats.load_seconds
        from remoe.server.tracing import tracer

        with tracer(__name__).start_as_current_span("cold_start") as span:
            for key, value in self.as_dict().items():
                span.set_attribute(f"remoe.cold_start.{key}", value)

    def as_dict(self) -> dict[str, float]:
        return {
            "process_start_s": self.process_start_s,
            "imports_s": self.imports_s,
            "init_s": self.init_s,
            "first_load_s": self.first_load_s,
            "first_compute_s": self.first_compute_s,
        }

    def proto(self):
        from remoe.proto import expert_pb2

        return expert_pb2.ColdStart(**self.as_dict(), complete=self.complete)


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        from remoe.functions import config

        print(__doc__ + "\n" + config.__doc__)
        return
    run(_STARTED)


def open_function_weights(model_dir: str | Path, record: str | Path | None = None):
    """(weights, how they were opened): the lean reader where an experts record (the backbone's, or a split's
    manifest) tells the experts' math and where they lie (transformers is never imported: seconds of a fresh
    process's cold start), else the full one. The runtime template opens its weights with this too."""
    from remoe.functions.lean_weights import open_lean

    weights, why = open_lean(model_dir, record)
    if weights is not None:
        return weights, f"lean ({why})"
    from remoe.checkpoint.weights import open_weights

    return open_weights(model_dir), f"full, imports transformers ({why})"


def run(started_at: float, weights=None) -> None:
    """Serve one function instance configured by the environment until SIGTERM. `started_at`: when this process
    began (a fresh interpreter) or was forked from the runtime template; `weights`: the checkpoint the template
    opened already (used when it is the configured one)."""
    from remoe.functions.config import FunctionConfig

    try:
        config = FunctionConfig.from_env()
    except ValueError as e:
        print(f"remoe function: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    clock = ColdStartClock(process_start_seconds(config.spawned_at, started_at))
    from remoe.constants import FunctionEnv

    if os.environ.get(FunctionEnv.PARENT_PID, "").isdigit():
        from remoe.server.parent_watch import exit_with_parent

        exit_with_parent(int(os.environ[FunctionEnv.PARENT_PID]))

    t = time.time()
    from remoe.checkpoint.dtypes import resolve_dtype
    from remoe.experts.executor import LocalExpertExecutor
    from remoe.experts.servicer import ExpertServicer
    from remoe.proto import expert_pb2, expert_pb2_grpc
    from remoe.server.common import Server, setup_logging
    from remoe.transport.local_plane import LocalPlaneServer

    opened = "the runtime template's"
    if weights is None or Path(weights.path).resolve() != Path(config.model_dir).resolve():
        # transformers' import, where needed, counts as imports
        weights, opened = open_function_weights(config.model_dir, config.experts_record)
    clock.imports_s = time.time() - t

    import torch

    torch.set_num_threads(config.threads)  # memory buys vCPUs: the local platform's stand-in for a CPU quota
    t = time.time()
    setup_logging(config.name, verbose=False)
    log = logging.getLogger("remoe.function")
    server = Server(config.name, config.host, config.port, workers=32)
    log.info("weights: %s; transformers imported: %s", opened, "yes" if "transformers" in sys.modules else "no")
    arch = weights.arch
    bad = [x for x in config.experts if x[0] not in arch.layer_indices or not 0 <= x[1] < arch.num_experts]
    if bad:
        print(f"remoe function {config.name}: experts {bad[:5]} are not in {config.model_dir}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    dtype = resolve_dtype(weights.config, config.dtype)
    budget = None
    if config.memory_bytes is not None:
        need = sum(weights.expert_nbytes_as(layer, e, dtype) for layer, e in config.experts)
        baseline = rss_bytes()
        if baseline + need > config.memory_bytes:
            print(
                f"remoe function {config.name}: memory size {config.memory_bytes / 2**20:.0f} MiB is too small: "
                f"the runtime takes {baseline / 2**20:.0f} MiB and its {len(config.experts)} experts need "
                f"{need / 2**20:.1f} MiB (at least {(baseline + need) / 2**20:.0f} MiB in all)",
                file=sys.stderr,
            )
            sys.exit(EXIT_TOO_LITTLE_MEMORY)
        budget = config.memory_bytes - baseline
    executor = LocalExpertExecutor(weights, hosted=config.experts, budget_bytes=budget, dtype=dtype)
    clock.executor = executor
    servicer = ExpertServicer(
        executor, config.name, kind="function", on_batch=clock.after_batch, cold_start=clock.proto
    )
    expert_pb2_grpc.add_ExpertServiceServicer_to_server(servicer, server.server)
    server.add(expert_pb2.DESCRIPTOR.services_by_name["ExpertService"].full_name)
    if config.local_plane:
        servicer.local_plane = LocalPlaneServer(config.name, servicer._answer, 32)
    server.start(config.ready_file)
    clock.ready_at = time.time()
    clock.init_s = clock.ready_at - t
    log.info("%s hosts %d experts; cold start so far %s", config.name, len(config.experts), clock.as_dict())
    server.wait_for_signal(grace_s=2.0)
    if servicer.local_plane is not None:
        servicer.local_plane.close()


if __name__ == "__main__":
    main()
