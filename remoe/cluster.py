"""LocalCluster: gateway, backbone and expert services as local processes (what `remoe up` runs).

Expert services start first on free ports; the backbone is pointed at them (sending each a round-robin
share of every layer's experts, and the remote share to functions it starts on demand when a remote ratio
is set); the gateway at the backbone. Each process is configured by the same environment variables
(`REMOE_<SERVICE>_<FIELD>`, remoe/settings.py) as in docker-compose and Kubernetes, writes its port to a
ready file once it serves, and logs to one file per service under the run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from remoe.constants import SERVICE_PARENT_PID
from remoe.errors import RemoeError
from remoe.ports import side_port_file
from remoe.server import startup
from remoe.settings import SERVICES, BackboneSettings, GatewaySettings, default_of, env_for


class ClusterError(RemoeError):
    """A service of the local cluster failed to start."""


@dataclass
class ServiceProcess:
    name: str
    argv: list[str]
    log_path: Path
    ready_file: Path
    env: dict[str, str] = field(default_factory=dict)  # its settings, REMOE_<SERVICE>_*
    process: subprocess.Popen | None = None
    port: int = 0
    started_s: float = 0.0
    spawned_at: float = 0.0  # wall clock, to compare with the service's own startup record
    metrics_port: int | None = None  # its Prometheus /metrics (the gateway's are on its HTTP port)
    launch_argv: list[str] | None = None  # how it was first started, when not `argv` (a deferred start)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _wait_for_port(service: ServiceProcess, timeout_s: float) -> None:
    """Until something accepts connections on the service's port (a process that writes no ready file)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", service.port), timeout=0.5).close()
            return
        except OSError:
            if service.process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"{service.name} did not start; log {service.log_path}") from None
            time.sleep(0.05)


@dataclass
class LocalCluster:
    model_dir: Path
    port: int = default_of(GatewaySettings, "port")
    expert_services: int = 2
    run_dir: Path | None = None
    expert_budget_bytes: int | None = None
    backbone_device: str | None = None
    remote_ratio: float = 0.0
    plan_file: Path | None = None
    function_ttl_s: float = default_of(BackboneSettings, "function_ttl_s")
    function_memory_mb: int = default_of(BackboneSettings, "function_memory_mb")
    prewarm: bool = True
    predictor: bool = True  # the predictor service, with embedded Qdrant and (when installed) Redis
    predictor_address: str | None = None  # a predictor already running (e.g. an oracle) instead of starting one
    # The scheduler service plans every request when it has this machine's measured speeds (a `remoe profile`
    # JSON) and no static placement is given (remote_ratio or plan_file); with Redis it caches plans and the
    # gateway meters each request into the ledger stream. Without a profile Remoe does not guess: every expert
    # stays on the expert services. scheduler=True plans even without one (placeholder speeds).
    scheduler: bool | None = None
    profile: Path | None = None
    slo_ttft_ms: float = 0.0
    slo_tpot_ms: float = 0.0
    redis_url: str | None = None  # set by start() when it started a redis-server
    http_port: int | None = None  # the gateway's OpenAI-compatible API and /metrics (None or 0: a free port)
    env: dict[str, str] = field(default_factory=dict)
    services: list[ServiceProcess] = field(default_factory=list)
    launched_at: float = 0.0  # wall clock when start() began

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir).resolve()
        if self.expert_services < 0:
            raise ValueError("expert_services must be >= 0")
        self._own_run_dir = self.run_dir is None
        self.run_dir = Path(self.run_dir or tempfile.mkdtemp(prefix="remoe-run-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The OpenAI-compatible API's base URL (what `openai.OpenAI(base_url=...)` takes)."""
        return f"http://127.0.0.1:{self.http_port}/v1"

    def _service(self, name: str, kind: str, /, **settings: Any) -> ServiceProcess:
        """A service process `python -m remoe.services.KIND` configured by its environment variables; every
        service but the gateway (whose /metrics is on its HTTP port) serves its metrics on a free port."""
        ready = self.run_dir / f"{name}.port"
        for stale in (ready, side_port_file(ready, "metrics"), side_port_file(ready, "http")):
            stale.unlink(missing_ok=True)
        if kind != "gateway":
            settings.setdefault("metrics_port", 0)  # any free port: the service writes it beside its ready file
        env = env_for(SERVICES[kind], model=self.model_dir, ready_file=ready, **settings)
        argv = [sys.executable, "-m", f"remoe.services.{kind}"]
        return ServiceProcess(name, argv, self.run_dir / f"{name}.log", ready, env)

    def _spawn_deferred(self, name: str, kind: str) -> ServiceProcess:
        """Spawn a service that imports now and waits for its settings (`_configure`): its imports overlap the
        start of the services whose addresses it needs."""
        settings = self.run_dir / f"{name}.settings.json"
        settings.unlink(missing_ok=True)
        service = self._service(name, kind)
        service.env = {}  # its settings come with _configure
        service.launch_argv = [sys.executable, "-m", "remoe.services.deferred_start", f"remoe.services.{kind}"]
        service.launch_argv.append(str(settings))
        self._spawn(service)
        return service

    def _configure(self, service: ServiceProcess, kind: str, **settings: Any) -> None:
        """Send a deferred service its settings; it runs its main() on them."""
        service.env = self._service(service.name, kind, **settings).env
        path = self.run_dir / f"{service.name}.settings.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"env": service.env}))
        tmp.rename(path)

    def threads_per_service(self) -> int:
        """OpenMP threads each service process gets (the backbone included)."""
        # OpenMP threads spin while they wait; more of them than cores across processes costs each fan-out
        # milliseconds (measured: 2.5 ms vs 13 ms per layer on 2 cores), so share the cores out.
        return max(1, (os.cpu_count() or 1) // (self.expert_services + 1))

    def _spawn(self, service: ServiceProcess) -> None:
        threads = str(self.threads_per_service())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, **self.env, **service.env}
        env[SERVICE_PARENT_PID] = str(os.getpid())  # it stops when this process is gone
        log = service.log_path.open("ab")
        service.process = subprocess.Popen(
            service.launch_argv or service.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        service.started_s = time.monotonic()
        service.spawned_at = time.time()
        self.services.append(service)

    def _wait_ready(self, group: list[ServiceProcess], timeout_s: float, report: Callable[[str], None]) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(group)
        while waiting:
            for service in list(waiting):
                if service.process.poll() is not None:
                    raise ClusterError(
                        f"{service.name} exited with code {service.process.returncode} while starting; "
                        f"log {service.log_path}:\n{service.log_tail()}"
                    )
                if service.ready_file.is_file():
                    service.port = int(service.ready_file.read_text())
                    metrics = side_port_file(service.ready_file, "metrics")
                    service.metrics_port = int(metrics.read_text()) if metrics.is_file() else None
                    _check_health(service.address)
                    report(f"{service.name} ready on {service.address} ({time.monotonic() - service.started_s:.1f} s)")
                    waiting.remove(service)
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in waiting)
                raise ClusterError(f"{names} not ready after {timeout_s:.0f} s; logs in {self.run_dir}")
            time.sleep(0.05)

    def startup_breakdown(self) -> list[str]:
        """Where the cold start went, per service in start order (remoe/server/startup.py)."""
        starts = [
            startup.ServiceStart(s.name, s.spawned_at, startup.StartupRecord.load(startup.startup_file(s.ready_file)))
            for s in self.services
        ]
        return startup.breakdown(starts, self.launched_at)

    def start(self, report: Callable[[str], None] = lambda _: None, timeout_s: float = 180.0) -> LocalCluster:
        """Start every service at once: the expert services, the predictor and the scheduler run; the backbone and
        the gateway import meanwhile and run once the services they talk to serve (the backbone: the expert
        services; the gateway: the backbone, predictor and scheduler), so every start overlaps the others, as the
        backbone's start overlaps its functions'."""
        self.launched_at = time.time()
        try:
            experts = [
                self._service(
                    f"expert-{i}", "expert", port=0, name=f"expert-{i}", budget_bytes=self.expert_budget_bytes or None
                )
                for i in range(self.expert_services)
            ]
            for service in experts:
                self._spawn(service)
            report(f"starting {len(experts)} expert service(s); logs in {self.run_dir}")
            wanted = self.scheduler if self.scheduler is not None else self.profile is not None
            planned = wanted and not (self.plan_file or self.remote_ratio)
            if self.predictor or planned:
                self.redis_url = self._start_redis(report)
            predictor = scheduler = None
            if self.predictor and not self.predictor_address:
                predictor = self._spawn_predictor()
            if planned:
                scheduler = self._spawn_scheduler()
            backbone = self._spawn_deferred("backbone", "backbone")
            gateway = self._spawn_deferred("gateway", "gateway")
            self._wait_ready(experts, timeout_s, report)

            self._configure(
                backbone,
                "backbone",
                port=0,
                run_dir=self.run_dir / "functions",
                experts=[service.address for service in experts] or None,
                device=self.backbone_device,
                plan=self.plan_file,
                remote_ratio=None if self.plan_file else self.remote_ratio or None,
                function_ttl_s=self.function_ttl_s,
                function_memory_mb=self.function_memory_mb,
            )
            self._wait_ready([s for s in (backbone, predictor, scheduler) if s is not None], timeout_s, report)

            gateway_settings: dict[str, Any] = {
                "port": self.port,
                "http_port": self.http_port or 0,
                "backbone": backbone.address,
                "prewarm": self.prewarm,
            }
            if self.predictor_address:
                gateway_settings["predictor"] = self.predictor_address
            elif predictor is not None:
                gateway_settings["predictor"] = predictor.address
                gateway_settings["prior_redis_url"] = self.redis_url
            if self.redis_url:  # every request is metered wherever there is a Redis for the ledger
                gateway_settings["ledger_redis_url"] = self.redis_url
            if scheduler is not None:
                gateway_settings.update(
                    scheduler=scheduler.address, slo_ttft_ms=self.slo_ttft_ms, slo_tpot_ms=self.slo_tpot_ms
                )
            self._configure(gateway, "gateway", **gateway_settings)
            self._wait_ready([gateway], timeout_s, report)
            self.port = gateway.port
            self.http_port = int(side_port_file(gateway.ready_file, "http").read_text())
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self, report: Callable[[str], None]) -> str | None:
        binary = shutil.which("redis-server")
        if binary is None:
            report("redis-server not found (apt-get install redis-server): the predictor runs without its prior")
            return None
        port = free_port()
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        redis_service = ServiceProcess("redis", argv, self.run_dir / "redis.log", self.run_dir / "redis.port")
        self._spawn(redis_service)
        redis_service.port = port
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or redis_service.process.poll() is not None:
                    raise ClusterError(f"redis-server did not start; log {redis_service.log_path}") from None
                time.sleep(0.05)
        report(f"redis ready on 127.0.0.1:{port}")
        return url

    def _spawn_scheduler(self) -> ServiceProcess:
        profile = Path(self.profile).resolve() if self.profile else None
        scheduler = self._service("scheduler", "scheduler", port=0, redis_url=self.redis_url, profile=profile)
        self._spawn(scheduler)
        return scheduler

    def _spawn_predictor(self) -> ServiceProcess:
        predictor = self._service(
            "predictor", "predictor", port=0, qdrant_path=self.run_dir / "qdrant", redis_url=self.redis_url
        )
        self._spawn(predictor)
        return predictor

    def by_name(self, name: str) -> ServiceProcess:
        return next(s for s in self.services if s.name == name)

    def restart(self, name: str, timeout_s: float = 60.0) -> ServiceProcess:
        """Start a service that stopped (crashed or was killed) again, on the same port, so the services that
        talk to it reconnect by themselves."""
        old = self.by_name(name)
        if old.process is not None and old.process.poll() is None:
            raise ClusterError(f"{name} is still running (pid {old.process.pid})")
        prefix = next((k for k in old.env if k.endswith("_READY_FILE")), "").removesuffix("READY_FILE")
        env = {**old.env, f"{prefix}PORT": str(old.port)} if prefix else old.env  # redis-server: port in argv
        if old.metrics_port:  # the same metrics port too, where scrapers look
            env[f"{prefix}METRICS_PORT"] = str(old.metrics_port)
        if old.name == "gateway":
            env[f"{prefix}HTTP_PORT"] = str(self.http_port)
        index = self.services.index(old)
        service = ServiceProcess(name, old.argv, old.log_path, old.ready_file, env, metrics_port=old.metrics_port)
        service.ready_file.unlink(missing_ok=True)
        for what in ("metrics", "http"):
            side_port_file(service.ready_file, what).unlink(missing_ok=True)
        self._spawn(service)  # appended: moved into the old one's place (stop() goes in reverse start order)
        self.services.remove(service)
        self.services[index] = service
        if prefix:
            self._wait_ready([service], timeout_s, lambda _: None)
        else:
            service.port = old.port
            _wait_for_port(service, timeout_s)
        return service

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every service (gateway first), then SIGKILL what is still running after `grace_s`."""
        for service in reversed(self.services):
            if service.process and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in reversed(self.services):
            if service.process is None:
                continue
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        self.services.clear()

    def cleanup(self) -> None:
        self.stop()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def free_port() -> int:
    """A port on 127.0.0.1 free right now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_health(address: str, timeout_s: float = 10.0) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s, wait_for_ready=True)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise ClusterError(f"{address} is not SERVING")
