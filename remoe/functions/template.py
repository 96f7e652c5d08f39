"""The runtime template: a process that has imported everything an expert function needs and opened the
checkpoint's index, from which the local platform forks function instances.

A fresh function process spends ~3.3 s of its ~3.5 s cold start importing torch, transformers and grpc
(docs/results/cold_start.md). Forked from this template an instance starts with all of that done, and each
instance still gets its own environment (experts, memory size, port, name), log, threads and process.

Nothing here starts a thread, torch's thread pool or gRPC's core before a fork: a child inherits only the
forking thread, and each instance sets its own thread count. The template is single-threaded: it waits on
its requests and on SIGCHLD with select().

Protocol, one JSON object per line. The platform writes to the template's stdin:
    {"op": "spawn", "id": N, "env": {...}, "log": "/path/to/instance.log"}
    {"op": "signal", "id": N, "signal": 15}
and reads from its stdout:
    {"ready": true, "pid": P}                 once imported (requests sent before are queued in the pipe)
    {"id": N, "pid": P}                       the instance is forked
    {"id": N, "exit": CODE}                   it ended (CODE as Popen.returncode: -SIG when killed by SIG)
    {"id": N, "exit": 1, "error": "..."}      it could not be forked
The template exits when its stdin closes (the platform is gone); its instances then exit too (they watch
their parent, the template).

    python -m remoe.functions.template MODEL_DIR [--spares N]

`--spares N` (default 0): keep N children forked ahead, each waiting for its configuration, so a start request
is handed to a process that exists already (the fork is off the critical path) and a new spare is forked after
it. bench/cold_start.py measures both ways.
"""

from __future__ import annotations

import time

_STARTED = time.time()

import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402


def preload(model_dir: Path):
    """Import what a function instance imports and open the checkpoint's index (no tensor read, no file left
    open: safetensors handles open lazily, per instance). Through the backbone's experts record (in the
    environment every instance shares) or a split's manifest, transformers is never imported: the instances
    read their experts the lean way, and the template spends seconds less CPU beside the starting services."""
    import torch  # noqa: F401

    from remoe.checkpoint.dtypes import resolve_dtype  # noqa: F401
    from remoe.constants import FunctionEnv
    from remoe.experts.executor import LocalExpertExecutor  # noqa: F401
    from remoe.experts.servicer import ExpertServicer  # noqa: F401
    from remoe.functions import expert
    from remoe.proto import expert_pb2, expert_pb2_grpc  # noqa: F401
    from remoe.server.common import Server, setup_logging  # noqa: F401
    from remoe.transport.local_plane import LocalPlaneServer  # noqa: F401

    weights, opened = expert.open_function_weights(model_dir, os.environ.get(FunctionEnv.EXPERTS_RECORD) or None)
    print(f"runtime template: weights {opened}", file=sys.stderr, flush=True)
    weights.arch  # noqa: B018  (a full open's meta skeleton: built once here, shared by every instance)
    return weights


class Template:
    def __init__(self, weights, requests_fd: int, replies_fd: int, spares: int = 0) -> None:
        self.weights = weights
        self.spare_count = spares
        self.spares: list[tuple[int, int]] = []  # (pid, the pipe its configuration comes on)
        self.requests_fd = requests_fd
        self.replies_fd = replies_fd
        self.children: dict[int, int] = {}  # pid -> request id
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def reply(self, message: dict) -> None:
        os.write(self.replies_fd, (json.dumps(message) + "\n").encode())

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up fd is written on every SIGCHLD
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.fork_spares()
        self.reply({"ready": True, "pid": os.getpid()})
        pending = b""
        while True:
            readable, _, _ = select.select([self.requests_fd, self.wake_r], [], [])
            if self.wake_r in readable:
                os.read(self.wake_r, 4096)
                self.reap()
            if self.requests_fd in readable:
                chunk = os.read(self.requests_fd, 1 << 16)
                if not chunk:  # the platform is gone: so are we (our instances follow)
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in filter(None, lines):
                    self.handle(json.loads(line))

    def handle(self, request: dict) -> None:
        if request["op"] == "signal":
            for pid, rid in self.children.items():
                if rid == request["id"]:
                    try:
                        os.kill(pid, int(request["signal"]))
                    except ProcessLookupError:
                        pass
            return
        self.reap()  # a spare that died and whose SIGCHLD is not handled yet must not be handed the request
        pid = self.hand_to_spare(request)
        if pid is None:
            try:
                pid = os.fork()
            except OSError as e:
                self.reply({"id": request["id"], "exit": 1, "error": f"fork failed: {e}"})
                return
            if pid == 0:
                self.become_instance(request)
        self.children[pid] = request["id"]
        self.reply({"id": request["id"], "pid": pid})
        self.fork_spares()

    def hand_to_spare(self, request: dict) -> int | None:
        """The pid of the spare that now runs `request`; None when no spare took it (none left, or the one asked
        had died unreaped: its pipe is broken)."""
        while self.spares:
            pid, config_fd = self.spares.pop(0)
            try:
                os.write(config_fd, json.dumps(request).encode())
                return pid
            except OSError:
                continue
            finally:
                os.close(config_fd)
        return None

    def fork_spares(self) -> None:
        while len(self.spares) < self.spare_count:
            config_r, config_w = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(config_r)
                os.close(config_w)
                return
            if pid == 0:
                os.close(config_w)
                for _, fd in self.spares:
                    os.close(fd)
                self.spares = []
                chunks = []
                while chunk := os.read(config_r, 1 << 16):  # EOF without a request: the template is gone
                    chunks.append(chunk)
                if not chunks:
                    os._exit(0)
                os.close(config_r)
                self.become_instance(json.loads(b"".join(chunks)))
            os.close(config_r)
            self.spares.append((pid, config_w))

    def become_instance(self, request: dict) -> None:
        """In the forked child: take the instance's environment and log, serve, exit."""
        started = time.time()
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.wake_r, self.wake_w, self.requests_fd, *(fd for _, fd in self.spares)):
                os.close(fd)
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            os.close(self.replies_fd)
            os.environ.clear()
            os.environ.update(request["env"])
            from remoe.constants import FunctionEnv
            from remoe.functions import expert

            os.environ[FunctionEnv.PARENT_PID] = str(os.getppid())  # exit with the template
            expert.run(started, weights=self.weights)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def reap(self) -> None:
        """Collect every child that ended: an instance's exit is reported, a spare that died unasked is replaced."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rid = self.children.pop(pid, None)
            if any(pid == spare for spare, _ in self.spares):  # a spare died unasked: replace it
                os.close(next(fd for spare, fd in self.spares if spare == pid))
                self.spares = [(p, fd) for p, fd in self.spares if p != pid]
                self.fork_spares()
            if rid is not None:
                self.reply({"id": rid, "exit": os.waitstatus_to_exitcode(status)})


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--spares", type=int, default=0)
    args = parser.parse_args()
    # The protocol gets its own descriptors; fd 1 and 2 go to the template's log, so a stray print cannot corrupt it.
    requests_fd, replies_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    weights = preload(args.model_dir)
    print(f"remoe function template: ready in {time.time() - _STARTED:.2f} s", file=sys.stderr, flush=True)
    Template(weights, requests_fd, replies_fd, args.spares).serve()


if __name__ == "__main__":
    main()
