"""What every Remoe server shares: options, health, reflection, readiness file, clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from remoe.constants import SERVICE_PARENT_PID
from remoe.ports import write_port
from remoe.server import startup
from remoe.server.parent_watch import exit_with_parent
from remoe.server.tracing import setup_tracing
from remoe.transport.channel import SERVER_OPTIONS

log = logging.getLogger(__name__)


class Server:
    """A grpc.Server with health checking and reflection, started on host:port."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        workers: int,
        max_rpcs: int | None = None,
        interceptors: list[grpc.ServerInterceptor] | None = None,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        """`max_rpcs`: RPCs in progress at once; gRPC answers more with RESOURCE_EXHAUSTED (None: no limit).
        `credentials`: serve TLS instead of plaintext."""
        setup_tracing(name)
        # Started by `remoe up`: stop cleanly when it is gone, however it ended (only the process it started
        # watches: a grandchild that inherited the variable is not stopped by mistake).
        if os.environ.get(SERVICE_PARENT_PID) == str(os.getppid()):
            exit_with_parent(os.getppid(), graceful=True)
        self.name = name
        self.credentials = credentials
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=max_rpcs,
            interceptors=interceptors or (),
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._services = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        self.address = f"{host}:{port}"
        self.host = host
        self.port = port

    def add(self, service_name: str) -> None:
        self._services.append(service_name)

    def start(self, ready_file: Path | None = None) -> int:
        reflection.enable_server_reflection(self._services, self.server)
        if self.credentials is not None:
            self.port = self.server.add_secure_port(self.address, self.credentials)
        else:
            self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise SystemExit(f"{self.name}: cannot bind {self.address}")
        self.server.start()
        for service in self._services:
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        record = startup.current()
        if record is not None:
            record.serving = time.time()
        if ready_file is not None:
            if record is not None:
                record.save(startup.startup_file(ready_file))
            write_port(ready_file, self.port)
        log.info("%s serving on %s:%d%s", self.name, self.host, self.port, " (TLS)" if self.credentials else "")
        return self.port

    def wait_for_signal(self, grace_s: float = 5.0) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        log.info("%s stopped", self.name)


def setup_logging(name: str, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
