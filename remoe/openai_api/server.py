"""uvicorn in a thread of the gateway process, beside its gRPC server."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0


class HttpServer:
    def __init__(
        self, app: FastAPI, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None
    ) -> None:
        self.host = host
        self.tls = tls_cert is not None
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self.port = 0

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; start() reports it
            pass

    def start(self) -> int:
        """Serve; returns the bound port once it accepts connections. A port it cannot bind ends the process
        with a message (SystemExit), as the gRPC server does."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"gateway: cannot serve HTTP on {self.host}:{self.server.config.port}")
            time.sleep(0.01)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        scheme = "https" if self.tls else "http"
        log.info("OpenAI-compatible API on %s://%s:%d/v1 (metrics at /metrics)", scheme, self.host, self.port)
        return self.port

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
