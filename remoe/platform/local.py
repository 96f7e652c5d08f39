"""The local function platform: function instances as processes on this machine.

Scale from zero: an instance starts when first needed (or on `warm`). Scale to zero: an instance idle
for `idle_ttl_s` is stopped. Each replica is its own process with its own memory size, passed to the
function, which refuses to start (exit 3, message on stderr) when its experts cannot fit. By default an
instance is forked from a runtime template that has imported everything already (remoe/platform/launcher.py).

Running instances together hold at most `memory_budget_mb` (default half the machine's memory; without it, plans
bringing new functions once started 78 processes and ran out of memory). Beyond it the least recently used warm
instances stop first; when instances still starting leave no room, the start fails (FunctionStartError) and the
dispatcher computes that batch on an expert service, so tokens stay exact.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from remoe.constants import FunctionEnv
from remoe.functions.config import FunctionConfig
from remoe.platform.base import ColdStartRecord, FunctionSpec, FunctionStartError, InstanceStatus
from remoe.platform.inherited_env import function_environment
from remoe.platform.launcher import InstanceProcess, Launcher, PlainLauncher, TemplateLauncher
from remoe.platform.local_instance import LocalInstance
from remoe.settings import BackboneSettings, default_of

log = logging.getLogger(__name__)
DEFAULT_IDLE_TTL_S: float = default_of(BackboneSettings, "function_ttl_s")
DEFAULT_RUNTIME: str = default_of(BackboneSettings, "function_runtime")
# Children the runtime template keeps forked ahead: a start is handed to one, so the fork is off its path. Measured
# against forking on demand (docs/results/cold_start.md, "pool" vs "fork"): 2-13 ms faster on the tiny model,
# within a few ms either way on the DeepSeek shape.
TEMPLATE_SPARES = 1
# After an instance failed to start (e.g. its experts do not fit its memory), starting it again is refused for
# this long: every batch routed to it would otherwise spawn a doomed process.
START_RETRY_S = 10.0


def default_memory_budget_mb() -> int:
    """Half of this machine's physical memory, in MB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 // 2**20
    except (ValueError, OSError):
        return 8192


class LocalFunctionPlatform:
    def __init__(
        self,
        model_dir: str | Path,
        run_dir: str | Path,
        idle_ttl_s: float = DEFAULT_IDLE_TTL_S,
        env: dict[str, str] | None = None,
        memory_budget_mb: int | None = None,
        max_starting: int | None = None,
        runtime: str = DEFAULT_RUNTIME,
        experts_record: Path | None = None,
    ) -> None:
        """`runtime`: "fork" forks instances from a pre-imported runtime template, "process" starts fresh
        interpreters. `experts_record`: lets them read their experts without transformers (experts_record.py)."""
        if runtime not in ("fork", "process"):
            raise ValueError(f"function runtime {runtime!r}: use 'fork' or 'process'")
        self.runtime = runtime
        self._launcher_instance: Launcher | None = None
        self.model_dir = Path(model_dir).resolve()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.idle_ttl_s = idle_ttl_s
        self.memory_budget_mb = memory_budget_mb or default_memory_budget_mb()
        self.max_starting = max_starting or max(1, (os.cpu_count() or 2) // 2)
        self.skipped_starts = 0  # bounded starts not made because max_starting were starting
        self.evictions = 0  # warm instances stopped to make room for others
        # Many small processes share the machine's cores: a function's threads (1 per GiB of memory) wait
        # passively, or idle OpenMP threads spin and starve the others.
        self._env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
        self._env |= {FunctionEnv.EXPERTS_RECORD: str(experts_record)} if experts_record else {}
        self._lock = threading.RLock()
        self._instances: dict[str, list[LocalInstance]] = {}
        self._active_requests = 0  # while any request runs, no function is idle: the request may need it
        self.cold_starts: list[ColdStartRecord] = []
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap_idle, name="function-reaper", daemon=True)
        self._reaper.start()

    # -- deployment
    def deploy(self, specs: list[FunctionSpec]) -> None:
        wanted = {s.name: s for s in specs}
        with self._lock:
            if specs:
                self._launcher()  # the template imports while nothing asks for an instance yet
            for name in list(self._instances):
                current = self._instances[name]
                if name not in wanted or current[0].spec != wanted[name]:
                    for inst in current:
                        self._stop(inst)
                    del self._instances[name]
            for name, spec in wanted.items():
                if name not in self._instances:
                    self._instances[name] = [LocalInstance(spec, r) for r in range(spec.replicas)]

    def ensure(self, specs: list[FunctionSpec]) -> None:
        """Add these functions (a request's plan) beside the deployed ones; a name deployed with another spec
        is replaced. No instance starts: idle functions cost nothing and scale to zero as usual."""
        with self._lock:
            if specs:
                self._launcher()
            for spec in specs:
                current = self._instances.get(spec.name)
                if current is not None and current[0].spec == spec:
                    continue
                for inst in current or []:
                    self._stop(inst)
                self._instances[spec.name] = [LocalInstance(spec, r) for r in range(spec.replicas)]

    def specs(self) -> list[FunctionSpec]:
        with self._lock:
            return [instances[0].spec for instances in self._instances.values()]

    keep_alive_s = property(lambda self: self.idle_ttl_s)  # how long an idle instance stays warm

    def running(self) -> list[FunctionSpec]:
        with self._lock:
            states = {name: {i.state for i in instances} for name, instances in self._instances.items()}
            warm = [n for n, s in states.items() if "warm" in s]
            starting = [n for n, s in states.items() if "warm" not in s and "starting" in s]
            return [self._instances[n][0].spec for n in warm + starting]

    # -- scale from zero
    def warm(self, names: list[str] | None = None, bounded: bool = False) -> None:
        """`bounded`: starts a request's plan asks for; at most `max_starting` instances start at once (the rest
        are skipped: their batches run on an expert service, and a later batch starts them). Each start costs
        seconds of CPU on this machine, which the requests being served share; the Warm RPC is not bounded."""
        with self._lock:
            for name in names if names is not None else list(self._instances):
                for inst in self._instances_of(name):
                    if bounded and not inst.running and self._starting() >= self.max_starting:
                        self.skipped_starts += 1
                        continue
                    try:
                        self._start(inst, reason="warm-up")
                    except FunctionStartError as e:  # pre-warming is best effort; a call will try again
                        log.debug("not pre-warming %s: %s", inst.name, e)

    def endpoints(self, name: str, timeout_s: float = 120.0) -> list[str]:
        with self._lock:
            instances = self._instances_of(name)
            for inst in instances:
                self._start(inst, reason="on demand")
        deadline = time.monotonic() + timeout_s
        for inst in instances:
            self._wait_ready(inst, deadline)
        now = time.monotonic()
        with self._lock:
            for inst in instances:
                inst.last_used = now
        return [f"127.0.0.1:{inst.port}" for inst in instances]

    def live_endpoints(self, name: str) -> list[tuple[int, str]]:
        """(replica, address) of the function's instances that serve now. A replica found dead (it crashed,
        we did not stop it) is replaced in the background, as Knative replaces a failed pod."""
        with self._lock:
            instances = self._instances_of(name)
            for inst in instances:
                if inst.process is not None and inst.process.poll() is not None and inst.ready.is_set():
                    inst.error = f"instance exited with code {inst.process.returncode}; replaced"
                    inst.crashes += 1
                    log.warning("function %s: %s", inst.name, inst.error)
                    inst.process = None
                    try:
                        self._start(inst, reason="replace crashed")
                    except FunctionStartError as e:
                        log.warning("not replacing %s now: %s", inst.name, e)
            return [(i.replica, f"127.0.0.1:{i.port}") for i in instances if i.state == "warm"]

    @contextmanager
    def lease(self):
        """Hold every function warm for the duration of a request (a request touches layers in turn, and
        waiting on one function's cold start must not let another one's idle TTL run out)."""
        with self._lock:
            self._active_requests += 1
        try:
            yield
        finally:
            now = time.monotonic()
            with self._lock:
                self._active_requests -= 1
                for instances in self._instances.values():
                    for inst in instances:
                        inst.last_used = max(inst.last_used, now)

    def touch(self, name: str, replica: int) -> None:
        """Note a call to an instance (keeps it warm for another TTL)."""
        with self._lock:
            for inst in self._instances.get(name, []):
                if inst.replica == replica:
                    inst.last_used = time.monotonic()
                    inst.calls += 1

    def _launcher(self) -> Launcher:
        """The runtime template starts with the first function deployed: it imports (seconds of CPU) while the
        backbone starts or the first request is planned, and every instance after it is a fork (lock held)."""
        if self._launcher_instance is None:
            if self.runtime == "fork":
                base_env = {**function_environment(), **self._env}
                log_path = self.run_dir / "template.log"
                self._launcher_instance = TemplateLauncher(self.model_dir, base_env, log_path, spares=TEMPLATE_SPARES)
            else:
                self._launcher_instance = PlainLauncher()
        return self._launcher_instance

    def wait_runtime(self, timeout_s: float = 180.0) -> float | None:
        """Start the runtime template now (when instances fork) and wait until it can fork them; returns its start
        in seconds (None: plain processes). A start measured after this is what each later start costs."""
        with self._lock:
            launcher = self._launcher()
        if not isinstance(launcher, TemplateLauncher):
            return None
        if not launcher.ready.wait(timeout_s) or launcher.ready_s is None:
            raise FunctionStartError(f"the function runtime template did not start (log {self.run_dir}/template.log)")
        return launcher.ready_s

    def _instances_of(self, name: str) -> list[LocalInstance]:
        try:
            return self._instances[name]
        except KeyError:
            raise FunctionStartError(f"no function named {name!r} is deployed") from None

    def _starting(self) -> int:
        return sum(i.state == "starting" for group in self._instances.values() for i in group)

    def _make_room(self, inst: LocalInstance) -> None:
        """Stop least recently used warm instances until `inst` fits the memory budget (lock held)."""
        if inst.spec.memory_mb > self.memory_budget_mb:
            raise FunctionStartError(
                f"function {inst.name} ({inst.spec.memory_mb} MB) is larger than the local platform's memory budget "
                f"of {self.memory_budget_mb} MB (REMOE_BACKBONE_FUNCTION_MEMORY_BUDGET_MB)"
            )
        running = [i for group in self._instances.values() for i in group if i.running and i is not inst]
        used = sum(i.spec.memory_mb for i in running)
        for other in sorted((i for i in running if i.state == "warm"), key=lambda i: i.last_used):
            if used + inst.spec.memory_mb <= self.memory_budget_mb:
                break
            log.info("stopping %s (least recently used) to make room for %s", other.name, inst.name)
            self._stop(other)
            self.evictions += 1
            used -= other.spec.memory_mb
        if used + inst.spec.memory_mb > self.memory_budget_mb:
            raise FunctionStartError(
                f"function {inst.name} ({inst.spec.memory_mb} MB) does not fit the local platform's memory budget "
                f"of {self.memory_budget_mb} MB: {used} MB are held by instances still starting"
            )

    def _start(self, inst: LocalInstance, reason: str) -> None:
        if inst.running:
            return
        if inst.error and time.monotonic() - inst.failed_at < START_RETRY_S:
            raise FunctionStartError(inst.error)
        self._make_room(inst)
        ready_file = self.run_dir / f"{inst.name}.port"
        ready_file.unlink(missing_ok=True)
        config = FunctionConfig(
            model_dir=self.model_dir,
            experts=list(inst.spec.experts),
            name=inst.name,
            port=0,
            memory_bytes=inst.spec.memory_mb * 2**20,
            ready_file=ready_file,
            local_plane=True,  # the backbone is on this host: it sends batches through the unix socket
        )
        inst.spawned_at = time.time()
        env = {
            **function_environment(),
            **self._env,
            **config.to_env(),
            FunctionEnv.SPAWNED_AT: repr(inst.spawned_at),
            FunctionEnv.PARENT_PID: str(os.getpid()),
        }
        inst.process = self._launcher().launch(env, self.run_dir / f"{inst.name}.log")
        inst.ready = threading.Event()
        inst.cold_starts += 1
        inst.last_used = time.monotonic()
        threading.Thread(target=self._watch_start, args=(inst, inst.process, ready_file, reason), daemon=True).start()

    def _watch_start(self, inst: LocalInstance, process: InstanceProcess, ready_file: Path, reason: str) -> None:
        if process.pid > 0:  # a forked one's pid: once forked (none when its template ended first)
            (self.run_dir / f"{inst.name}.pid").write_text(str(process.pid))
        while process.poll() is None and not ready_file.is_file():
            time.sleep(0.005)
        if process.poll() is not None and not ready_file.is_file():
            inst.error = self._exit_message(inst, process.returncode)
            inst.failed_at = time.monotonic()
            log.warning("%s (not retried for %.0f s)", inst.error, START_RETRY_S)
            inst.ready.set()
            return
        inst.port = int(ready_file.read_text())
        inst.error = ""
        inst.last_used = time.monotonic()  # the idle TTL counts from when it could first be used
        ready_s = time.time() - inst.spawned_at
        with self._lock:
            self.cold_starts.append(ColdStartRecord(inst.spec.name, inst.replica, inst.spawned_at, ready_s, reason))
        inst.ready.set()

    def _exit_message(self, inst: LocalInstance, code: int) -> str:
        if getattr(inst.process, "failure", ""):
            return f"function {inst.name} did not start: {inst.process.failure}"
        log_file = self.run_dir / f"{inst.name}.log"
        lines = log_file.read_text(errors="replace").strip().splitlines() if log_file.is_file() else []
        tail = next((line for line in reversed(lines) if "remoe function" in line), lines[-1] if lines else "")
        return f"function {inst.name} exited with code {code} while starting: {tail}"

    def _wait_ready(self, inst: LocalInstance, deadline: float) -> None:
        if not inst.ready.wait(max(0.0, deadline - time.monotonic())):
            raise FunctionStartError(f"function {inst.name} did not start in time (log {self.run_dir})")
        if inst.error:
            raise FunctionStartError(inst.error)

    # -- scale to zero
    def _reap_idle(self) -> None:
        while not self._closed.wait(0.25):
            now = time.monotonic()
            with self._lock:
                if self._active_requests:
                    continue
                for instances in self._instances.values():
                    for inst in instances:
                        if inst.state == "warm" and now - inst.last_used > self.idle_ttl_s:
                            log.info("scaling %s to zero after %.0f s idle", inst.name, now - inst.last_used)
                            self._stop(inst)

    def _stop(self, inst: LocalInstance) -> None:
        process = inst.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        inst.process = None
        inst.port = 0

    def kill(self, name: str, replica: int) -> None:
        """SIGKILL one instance (fault injection in tests)."""
        with self._lock:
            inst = self._instances_of(name)[replica]
            if inst.process is not None:
                inst.process.kill()
                inst.process.wait()

    # -- introspection
    def status(self) -> list[InstanceStatus]:
        with self._lock:
            return [
                InstanceStatus(
                    function=inst.spec.name,
                    replica=inst.replica,
                    state=inst.state,
                    address=f"127.0.0.1:{inst.port}" if inst.state == "warm" else "",
                    memory_mb=inst.spec.memory_mb,
                    cold_starts=inst.cold_starts,
                    calls=inst.calls,
                    last_error=inst.error,
                    crashes=inst.crashes,
                )
                for instances in self._instances.values()
                for inst in instances
            ]

    def close(self, grace_s: float = 5.0) -> None:
        """Stop every instance: all are signalled at once, then waited for together (one after another, a dozen
        instances outlasted the grace `remoe up` gives the backbone, which was killed and left them running)."""
        self._closed.set()
        with self._lock:
            processes = [
                inst.process
                for instances in self._instances.values()
                for inst in instances
                if inst.process is not None and inst.process.poll() is None
            ]
            for process in processes:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for process in processes:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for instances in self._instances.values():
                for inst in instances:
                    inst.process, inst.port = None, 0
            if self._launcher_instance is not None:
                self._launcher_instance.close()
