"""Gateway: the client-facing service, a translation of GatewayService's calls over GatewayCore (remoe/gateway/),
which the HTTP API (remoe/openai_api/) serves too. Validates, tokenizes, plans, streams tokens and text, meters.

python -m remoe.services.gateway --model DIR --backbone 127.0.0.1:50052 [--port 50051]
"""

from __future__ import annotations

import logging
from pathlib import Path

from remoe.constants import RETRY_PUSHBACK_KEY
from remoe.gateway.core import GatewayCore
from remoe.gateway.planning import PlanningConfig
from remoe.gateway.refused import Refused
from remoe.metrics.exposition import serve_metrics
from remoe.ports import side_port_file, write_port
from remoe.proto import gateway_pb2, gateway_pb2_grpc
from remoe.server import startup
from remoe.server.common import Server, setup_logging
from remoe.services.auth import BearerTokenInterceptor, TLSConfigError, server_credentials
from remoe.settings import GatewaySettings, load_settings

log = logging.getLogger(__name__)


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """GatewayService over a GatewayCore: a refusal becomes the call's status (and its retry hint, trailing)."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def Generate(self, request, context):
        try:
            yield from self.core.generate(request, context)  # a grpc.ServicerContext is the core's Caller
        except Refused as e:
            if e.retry_after_ms is not None:
                context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(e.retry_after_ms)),))
            context.abort(e.code, e.message)

    def Status(self, request, context):
        return self.core.status()


def main(argv: list[str] | None = None) -> None:
    startup.begin()  # the module's imports are done: what follows is this service's own start
    s = load_settings(GatewaySettings, argv, "python -m remoe.services.gateway", __doc__.split("\n")[0])
    setup_logging("gateway", s.verbose)
    # A thread for every admitted request plus a few for Status and health; beyond that gRPC itself refuses
    # (a backstop: the executor's queue stays bounded whatever arrives).
    workers = max(s.workers, s.max_requests + 4)
    try:
        credentials = server_credentials(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None
    except TLSConfigError as e:
        raise SystemExit(f"gateway: {e}") from None
    interceptors = [BearerTokenInterceptor(s.auth_token)] if s.auth_token else []
    server = Server("gateway", s.host, s.port, workers, workers, interceptors, credentials)
    planning = PlanningConfig(
        s.scheduler,
        s.ledger_redis_url,
        s.slo_ttft_ms / 1e3,
        s.slo_tpot_ms / 1e3,
        prior_redis_url=s.prior_redis_url,
        warm_aware=s.warm_aware_plans,
    )
    with startup.step("gateway core"):
        core = GatewayCore(
            s.model,
            s.backbone,
            prewarm=s.prewarm,
            predictor_address=s.predictor,
            planning=planning,
            max_requests=s.max_requests,
        )
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(core), server.server)
    server.add(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name)
    http = None
    if s.http:  # before the gRPC server writes its ready file: ready means both serve
        from remoe.openai_api import HttpServer, create_app

        app = create_app(
            core, s.served_model_name or Path(s.model).resolve().name, s.auth_token, max_choices=s.http_max_choices
        )
        http = HttpServer(app, s.host, s.http_port, s.tls_cert, s.tls_key)
        port = http.start()
        if s.ready_file is not None:
            write_port(side_port_file(s.ready_file, "http"), port)
    if s.metrics_port is not None:
        serve_metrics(core.metrics.registry, s.host, s.metrics_port, "gateway", side_port_file(s.ready_file, "metrics"))
    server.start(s.ready_file)
    server.wait_for_signal()
    if http is not None:
        http.stop()


if __name__ == "__main__":
    main()
