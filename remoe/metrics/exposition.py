"""Serving a registry: the text format, and a small HTTP server for services without an HTTP front end."""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from remoe.ports import write_port

log = logging.getLogger(__name__)


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, service: str, port_file: Path | None = None
) -> int:
    """Serve `registry` at http://host:port/metrics in a daemon thread (port 0: any free one, written to
    `port_file`); returns the bound port."""
    server, _ = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    if port_file is not None:
        write_port(port_file, bound)
    log.info("%s metrics on http://%s:%d/metrics", service, host, bound)
    return bound
