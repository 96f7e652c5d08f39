"""gRPC health probe for container health checks: exit 0 when the server answers SERVING, 1 otherwise.

    python -m remoe.probe gateway                 # 127.0.0.1 on REMOE_GATEWAY_PORT (default 50051, remoe/ports.py)
    python -m remoe.probe function                # the expert function: 127.0.0.1 on $PORT (default 8080)
    python -m remoe.probe --address HOST:PORT     # any address

Docker's HEALTHCHECK and compose's health-gated depends_on run it; Kubernetes probes gRPC health itself.
Only grpcio is imported, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys

from remoe.ports import DEFAULT_PORTS  # not the settings: the probe does not import pydantic


def address_of(service: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    variable = "PORT" if service == "function" else f"REMOE_{service.upper()}_PORT"  # Knative sets PORT
    port = env.get(variable) or DEFAULT_PORTS[service]
    return f"127.0.0.1:{port}"


def check(address: str, timeout_s: float) -> str:
    """The server's overall health status name (SERVING, NOT_SERVING, ...), or why it could not be asked."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remoe.probe", description=__doc__.split("\n")[0])
    parser.add_argument("service", nargs="?", choices=sorted(DEFAULT_PORTS), help="probe this service's own port")
    parser.add_argument("--address", help="HOST:PORT to probe instead")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    args = parser.parse_args(argv)
    if not args.address and not args.service:
        parser.error("give a service name or --address")
    address = args.address or address_of(args.service)
    status = check(address, args.timeout)
    if status != "SERVING":
        print(f"{address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
