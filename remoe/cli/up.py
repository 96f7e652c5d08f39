"""`remoe up`: the whole cluster as local processes (LocalCluster)."""

from __future__ import annotations

import argparse
import sys
import time

from remoe.cli.common import backbone_default, check_slos, gateway_default
from remoe.errors import RemoeError


def _check_up_args(args: argparse.Namespace) -> None:
    """What `remoe up` can refuse before starting any process, with the flag's name."""
    from pathlib import Path

    from remoe.platform.plan import load_plan_file

    model = Path(args.model)
    if not model.is_dir():
        raise RemoeError(f"--model {model}: no such directory")
    if not (model / "config.json").is_file():
        raise RemoeError(f"--model {model}: no config.json (not a Hugging Face checkpoint or split directory)")
    if not 0.0 <= args.remote_ratio <= 1.0:
        raise RemoeError(f"--remote-ratio must be in [0, 1], got {args.remote_ratio}")
    if args.plan:
        load_plan_file(args.plan)  # ValueError naming the file and what is wrong
    check_slos(args)
    for flag, port in (("--port", args.port), ("--http-port", args.http_port)):
        _check_port_free(flag, port)


def _check_port_free(flag: str, port: int) -> None:
    import socket

    if not 0 <= port <= 65535:
        raise RemoeError(f"{flag} must be in [0, 65535], got {port}")
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to a server
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise RemoeError(f"{flag} {port} is in use on 127.0.0.1: stop what holds it or pick another port") from None


def _cmd_up(args: argparse.Namespace) -> int:
    import signal
    import threading

    from remoe.cluster import LocalCluster

    _check_up_args(args)

    cluster = LocalCluster(
        args.model,
        port=args.port,
        http_port=args.http_port,
        expert_services=args.expert_services,
        run_dir=args.run_dir,
        expert_budget_bytes=args.expert_budget,
        backbone_device=args.device,
        remote_ratio=args.remote_ratio,
        plan_file=args.plan,
        function_ttl_s=args.function_ttl,
        function_memory_mb=args.function_memory_mb,
        scheduler=False if args.no_scheduler else None,
        profile=args.profile,
        slo_ttft_ms=args.slo_ttft or 0.0,
        slo_tpot_ms=args.slo_tpot or 0.0,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"remoe up: {args.model} (logs in {cluster.run_dir})", flush=True)
    from pathlib import Path

    from remoe.checkpoint.manifest import Manifest

    if fmt := Manifest.expert_format_label(Path(args.model)):
        print(f"routed experts stored {fmt}: answers are not exactly the checkpoint's", flush=True)
    try:
        cluster.start(report=lambda line: print(f"  {line}", flush=True))
        print(f"cold start, {time.time() - cluster.launched_at:.1f} s from launch to serving:", flush=True)
        for line in cluster.startup_breakdown():
            print(f"  {line}", flush=True)
        print(f"gateway listening on {cluster.address}; Ctrl-C stops every service", flush=True)
        base = cluster.http_url.removesuffix("/v1")
        print(f"OpenAI-compatible API on {cluster.http_url} (gateway metrics at {base}/metrics)", flush=True)
        metrics = ", ".join(f"{s.name} {s.metrics_url}" for s in cluster.services if s.metrics_url)
        if metrics:
            print(f"service metrics: {metrics}", flush=True)
        if cluster.redis_url and any(s.name == "scheduler" for s in cluster.services):
            print(f"metering ledger: `remoe cost --redis-url {cluster.redis_url}`", flush=True)
        while not stop.wait(1.0):
            dead = [s for s in cluster.services if s.process.poll() is not None]
            if dead:
                names = ", ".join(f"{s.name} (exit {s.process.returncode}, log {s.log_path})" for s in dead)
                print(f"remoe up: {names} stopped; shutting the cluster down", file=sys.stderr)
                return 1
    finally:
        print("stopping services ...", flush=True)
        cluster.stop()
        print("stopped", flush=True)
    return 0


def add_up(sub) -> None:
    p = sub.add_parser("up", help="run the whole cluster (gateway, backbone, expert services) as local processes")
    p.add_argument("--model", required=True, help="checkpoint or split directory")
    p.add_argument("--port", type=int, default=gateway_default("port"), help="gateway port (default %(default)s)")
    p.add_argument(
        "--http-port",
        type=int,
        default=gateway_default("http_port"),
        help="the gateway's OpenAI-compatible HTTP API and /metrics (default %(default)s; 0: any free port)",
    )
    p.add_argument(
        "--expert-services", type=int, default=2, help="expert services; each layer's experts are split between them"
    )
    p.add_argument("--expert-budget", type=int, default=None, help="bytes of experts each service keeps loaded")
    p.add_argument("--device", default=None, help="backbone device (default: cuda if available, else cpu)")
    p.add_argument("--run-dir", default=None, help="where logs and port files go (default: a new temp dir)")
    p.add_argument(
        "--remote-ratio",
        type=float,
        default=0.0,
        help="share of each layer's experts served by serverless functions (one per layer), e.g. 0.5",
    )
    p.add_argument("--plan", default=None, help="plan file (JSON) naming the functions, instead of --remote-ratio")
    p.add_argument(
        "--function-ttl",
        type=float,
        default=backbone_default("function_ttl_s"),
        help="idle seconds before a function scales to zero",
    )
    p.add_argument(
        "--function-memory-mb",
        type=int,
        default=backbone_default("function_memory_mb"),
        help="memory size of each function instance",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="`remoe profile` JSON: the scheduler then plans every request (without one, every expert stays on the "
        "expert services)",
    )
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in ms for every request's plan")
    p.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in ms for every request's plan")
    p.add_argument("--no-scheduler", action="store_true", help="no per-request plans even with --profile")
    p.set_defaults(func=_cmd_up)
