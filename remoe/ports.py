"""Port files: how a service that binds port 0 tells its starter which port it got."""

from __future__ import annotations

from pathlib import Path

# Each server's default gRPC port (the settings classes' defaults; the probe and the SDK read them here, without
# pydantic). "function" is the expert function's $PORT, which Knative sets.
DEFAULT_PORTS = {
    "gateway": 50051,
    "backbone": 50052,
    "predictor": 50053,
    "scheduler": 50054,
    "expert": 50061,
    "function": 8080,
}
DEFAULT_HTTP_PORT = 8000  # the gateway's OpenAI-compatible HTTP API and /metrics


def write_port(path: Path, port: int) -> None:
    """Write a bound port to `path` atomically: a reader never sees a half-written port."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(port))
    tmp.rename(path)


def side_port_file(ready_file: Path | None, what: str) -> Path | None:
    """Where a service that writes its gRPC port to `ready_file` writes another bound port ("metrics", "http"),
    before the ready file: once that exists, this one does too."""
    return ready_file.with_name(f"{ready_file.stem}.{what}-port") if ready_file is not None else None
