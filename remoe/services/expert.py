"""Expert service: computes routed experts for the backbone, loading any expert lazily on first use.

A backbone on the same host sends its batches through the co-located data plane the service advertises in
Stats (a unix socket, remoe/transport/local_plane.py) rather than through gRPC. Which experts it is sent is the
backbone's placement; it can serve any expert, which is what lets it take
over a failed function's batches; what it loads for those it drops once they stop coming (`--guest-idle-s`).
`--budget-bytes` bounds what it keeps loaded (LRU).

    python -m remoe.services.expert --model DIR [--budget-bytes N] [--port 0]
"""

from __future__ import annotations

import logging
import threading

from remoe.checkpoint.dtypes import resolve_dtype
from remoe.checkpoint.weights import open_weights
from remoe.experts.cache import release_idle_guests_every
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.servicer import ExpertServicer
from remoe.metrics.exposition import serve_metrics
from remoe.metrics.services import expert_registry
from remoe.ports import side_port_file
from remoe.proto import expert_pb2, expert_pb2_grpc
from remoe.server import startup
from remoe.server.common import Server, setup_logging
from remoe.settings import ExpertSettings, load_settings
from remoe.transport.local_plane import LocalPlaneServer

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    startup.begin()  # the module's imports are done: what follows is this service's own start
    s = load_settings(ExpertSettings, argv, "python -m remoe.services.expert", __doc__.split("\n")[0])
    name = s.name
    setup_logging(name, s.verbose)
    server = Server(name, s.host, s.port, s.workers)
    with startup.step("open weights"):
        weights = open_weights(s.model)
    dtype = resolve_dtype(weights.config, s.dtype)
    with startup.step("expert kernels"):
        executor = LocalExpertExecutor(
            weights, budget_bytes=s.budget_bytes, dtype=dtype, kernel=s.kernel, guest_idle_s=s.guest_idle_s
        )
    for layer, why in executor.kernel_reasons.items():
        log.info("layer %d experts: %s", layer, why)
    servicer = ExpertServicer(executor, name)
    expert_pb2_grpc.add_ExpertServiceServicer_to_server(servicer, server.server)
    server.add(expert_pb2.DESCRIPTOR.services_by_name["ExpertService"].full_name)
    if s.local_plane:
        servicer.local_plane = LocalPlaneServer(name, servicer._answer, s.workers)
    if s.metrics_port is not None:
        serve_metrics(expert_registry(servicer), s.host, s.metrics_port, name, side_port_file(s.ready_file, "metrics"))
    stop = threading.Event()
    release_idle_guests_every(executor.cache, s.guest_idle_s / 2, stop)
    server.start(s.ready_file)
    server.wait_for_signal()
    stop.set()
    if servicer.local_plane is not None:
        servicer.local_plane.close()


if __name__ == "__main__":
    main()
