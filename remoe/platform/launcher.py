"""How the local platform starts a function instance's process: a fresh interpreter, or a fork of the runtime
template (remoe/functions/template.py), which has imported torch, transformers and grpc already.

Both hand back a handle with the part of subprocess.Popen's interface the platform uses (pid, poll, wait,
send_signal, kill, returncode). A forked instance is the template's child, so the template reports its exit
code and delivers its signals; the handle knows its pid once the template has forked it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)
FUNCTION_COMMAND = [sys.executable, "-m", "remoe.functions.expert"]
TEMPLATE_COMMAND = [sys.executable, "-m", "remoe.functions.template"]
EXIT_TEMPLATE_GONE = -signal.SIGKILL  # an instance whose template vanished is killed, and reads as killed


class InstanceProcess(Protocol):
    """The part of subprocess.Popen the platform uses."""

    returncode: int | None

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def launch(self, env: dict[str, str], log_path: Path) -> InstanceProcess:
        """Start one instance with exactly this environment, its output appended to `log_path`; returns at once."""

    def close(self) -> None: ...


class PlainLauncher:
    """A fresh `python -m remoe.functions.expert` per instance (what a bare serverless platform does)."""

    def launch(self, env: dict[str, str], log_path: Path) -> subprocess.Popen:
        with log_path.open("ab") as out:
            return subprocess.Popen(
                FUNCTION_COMMAND, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def close(self) -> None:
        pass


class ForkedProcess:
    """An instance forked by the template."""

    def __init__(self, template: TemplateLauncher, request_id: int) -> None:
        self._template = template
        self._id = request_id
        self._pid: int | None = None
        self.returncode: int | None = None
        self.failure = ""  # why it ended without running (the template is gone, or could not fork)
        self._forked = threading.Event()
        self._exited = threading.Condition(template.lock)

    @property
    def pid(self) -> int:
        """Blocks until the template has forked the instance (it queues requests while it imports); 0 when it ended
        unforked (never a pid to signal: os.kill(0 or -1, ...) reaches whole groups)."""
        if not self._forked.wait(120):
            raise TimeoutError("the function runtime template did not fork the instance in 120 s")
        return self._pid or 0

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._exited:
            while self.returncode is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(TEMPLATE_COMMAND, timeout)
                self._exited.wait(left)
            return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # the template signals only a child it has not reaped: never a reused pid
            self._template.send({"op": "signal", "id": self._id, "signal": int(sig)})

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # -- called by the template's reader (lock held)
    def _on_pid(self, pid: int) -> None:
        self._pid = pid
        self._forked.set()

    def _on_exit(self, code: int) -> None:
        self.returncode = code
        self._forked.set()
        self._exited.notify_all()


class TemplateLauncher:
    """Forks instances from one runtime template process, started here for `model_dir` with the environment
    every instance shares (`base_env`: the allowlisted variables and thread settings, which libraries read when
    they load). If the template cannot start or dies, later instances are plain processes."""

    def __init__(self, model_dir: Path, base_env: dict[str, str], log_path: Path, spares: int = 0) -> None:
        """`spares`: children the template keeps forked ahead, waiting for their configuration (a pool refilled
        by fork rather than by a fresh import; bench/cold_start.py compares it with forking on demand)."""
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.ready_s: float | None = None  # start to ready, for the cold-start breakdown
        self._fallback = PlainLauncher()
        self._instances: dict[int, ForkedProcess] = {}
        self._next_id = 0
        self._write_lock = threading.Lock()  # one request line at a time on the template's stdin
        self._started = time.monotonic()
        self._broken = False
        with log_path.open("ab") as out:
            self._process = subprocess.Popen(
                [*TEMPLATE_COMMAND, str(model_dir), "--spares", str(spares)],
                env=base_env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
            )
        self._log_path = log_path
        threading.Thread(target=self._read_replies, name="function-template", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def usable(self) -> bool:
        return not self._broken and self._process.poll() is None

    def launch(self, env: dict[str, str], log_path: Path) -> InstanceProcess:
        with self.lock:
            if not self.usable:
                return self._fallback.launch(env, log_path)
            request_id = self._next_id
            self._next_id += 1
            handle = ForkedProcess(self, request_id)
            self._instances[request_id] = handle
        self.send({"op": "spawn", "id": request_id, "env": env, "log": str(log_path)})
        return handle

    def send(self, message: dict) -> None:
        try:
            assert self._process.stdin is not None
            with self._write_lock:
                self._process.stdin.write((json.dumps(message) + "\n").encode())
                self._process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the reader sees the template gone and ends its instances

    def _read_replies(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if reply.get("ready"):
                    self.ready_s = time.monotonic() - self._started
                    self.ready.set()
                    log.info("function runtime template ready in %.2f s (pid %s)", self.ready_s, reply.get("pid"))
                    continue
                handle = self._instances.get(reply.get("id", -1))
                if handle is None:
                    continue
                if "pid" in reply:
                    handle._on_pid(int(reply["pid"]))
                if "exit" in reply:
                    if reply.get("error"):
                        handle.failure = f"the function runtime template could not start it: {reply['error']}"
                    handle._on_exit(int(reply["exit"]))
                    del self._instances[reply["id"]]
        self._template_gone()

    def _template_gone(self) -> None:
        code = self._process.wait()
        lines = self._log_path.read_text(errors="replace").strip().splitlines() if self._log_path.is_file() else []
        why = f"the function runtime template exited with code {code}" + (f": {lines[-1]}" if lines else "")
        with self.lock:
            self._broken = True
            self.ready.set()  # nobody waits for a template that is gone (ready_s stays None)
            orphans = list(self._instances.values())
            self._instances.clear()
            for handle in orphans:
                if handle._pid is not None:
                    try:
                        os.kill(handle._pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                handle.failure = handle.failure or why
                handle._on_exit(EXIT_TEMPLATE_GONE)
        if orphans or code not in (0, -signal.SIGTERM):
            log.warning("%s (log %s); later instances start as plain processes", why, self._log_path)

    def close(self, grace_s: float = 5.0) -> None:
        """Close the template's stdin: it exits, and instances still running follow it."""
        try:
            if self._process.stdin is not None:
                with self._write_lock:
                    self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
