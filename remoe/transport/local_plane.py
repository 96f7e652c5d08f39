"""The co-located data plane: Compute's messages over a unix socket between processes on one host.

gRPC stays the contract: the same ExpertBatch / ExpertResult protobuf messages, answered by the same servicer
code, and gRPC carries everything else (health, Stats, Load, and Compute for every destination on another
host). A grpcio round trip costs ~0.4 ms of thread hand-offs inside grpcio on a 2-core machine, a unix socket
~30 µs, so a backbone sends batches to an expert service on its own host through the socket the service
advertises in Stats (`local_plane`). Frames are a 4-byte little-endian length and the message; a length
over the message limit closes the connection before anything is allocated. No pickle.

The socket lives in a per-user directory (mode 0700): only processes of the same user can connect.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from remoe.proto import expert_pb2
from remoe.transport.channel import MAX_MESSAGE_BYTES
from remoe.transport.remote_error import RemoteExpertError

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<I")
MAX_UNCLAIMED = 64  # answers kept for a later wait on the same connection
# A send blocks only while the peer is not reading: neither end reads while it is sending, and each reads
# every answer it is owed before it sends again, so a send this long means a stuck or vanished peer.
SEND_TIMEOUT_S = 30.0


class FrameError(ConnectionError):
    """The peer sent something that is not a frame of the data plane."""


def socket_dir() -> Path:
    """Per-user directory for data-plane sockets, readable by its owner only."""
    path = Path(tempfile.gettempdir()) / f"remoe-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid() or path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} must belong to uid {os.getuid()} with mode 0700")
    return path


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionResetError("the peer closed the connection")
        got += k
    return buf


def send_frame(sock: socket.socket, data: bytes, timeout_s: float | None) -> None:
    """One frame; TimeoutError when the peer has not taken it within `timeout_s`."""
    sock.settimeout(timeout_s)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def recv_frame(sock: socket.socket, max_bytes: int = MAX_MESSAGE_BYTES, timeout_s: float | None = None) -> bytearray:
    sock.settimeout(timeout_s)
    (length,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if length > max_bytes:
        raise FrameError(f"a frame of {length} bytes exceeds the limit of {max_bytes}")
    return _recv_exact(sock, length)


def _remove_stale(directory: Path, name: str) -> None:
    """Sockets of this service's earlier processes that died without closing them (killed hard)."""
    for path in directory.glob(f"{name}-*.sock"):
        pid = path.stem.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's


class LocalPlaneServer:
    """Answers batches on a unix socket with `answer` (the servicer's own), one thread per connection."""

    def __init__(
        self, name: str, answer: Callable[[expert_pb2.ExpertBatch], expert_pb2.ExpertResult], max_connections: int
    ) -> None:
        directory = socket_dir()
        name = name if len(name) <= 40 else hashlib.sha256(name.encode()).hexdigest()[:16]  # sun_path: 108 bytes
        _remove_stale(directory, name)
        self.path = directory / f"{name}-{os.getpid()}.sock"
        self.path.unlink(missing_ok=True)
        self._answer = answer
        self._slots = threading.BoundedSemaphore(max_connections)
        self.batches = 0  # answered through the plane (a counter read by Stats)
        self._count_lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._sock.listen(max_connections)
        self._closed = False
        threading.Thread(target=self._accept, name="local-plane-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                conn.close()  # over the limit: the client falls back to gRPC
                continue
            threading.Thread(target=self._serve, args=(conn,), name="local-plane", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                batch = expert_pb2.ExpertBatch()
                batch.ParseFromString(bytes(recv_frame(conn)))
                reply = self._answer(batch)
                with self._count_lock:
                    self.batches += 1  # before the answer leaves, so a caller that has it sees the count
                send_frame(conn, reply.SerializeToString(), SEND_TIMEOUT_S)
        except TimeoutError:
            log.warning("local data plane: a client took no answer for %.0f s; closing its connection", SEND_TIMEOUT_S)
        except (ConnectionError, DecodeError) as e:
            if not isinstance(e, ConnectionResetError):
                log.warning("local data plane: closing a connection: %s", e)
        except OSError:
            pass  # the server is shutting down
        finally:
            conn.close()
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self.path.unlink(missing_ok=True)


class PlaneConnection:
    """One thread's connection to a local plane: the same submit/wait as a gRPC stream, read on that thread."""

    def __init__(self, path: str, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)  # OSError when the service is gone: the caller uses gRPC instead
        self.pending: set[int] = set()
        self.arrived: dict[int, expert_pb2.ExpertResult] = {}
        self.broken: RemoteExpertError | None = None

    def submit(self, seq: int, batch: expert_pb2.ExpertBatch) -> bool:
        if self.broken is not None:
            return False
        try:
            # Answers still owed (a batch whose caller gave up, or a second batch to this service in one layer):
            # read them first. Otherwise a big frame sent now and a big answer sent back can each fill the
            # socket's buffer, and both ends block in send for ever.
            while self.pending:
                self._read_one(SEND_TIMEOUT_S)
            send_frame(self.sock, batch.SerializeToString(), SEND_TIMEOUT_S)
        except TimeoutError:
            self._break(grpc.StatusCode.UNAVAILABLE, f"local data plane: no progress for {SEND_TIMEOUT_S:.0f} s")
            return False
        except (OSError, DecodeError) as e:
            self._break(grpc.StatusCode.UNAVAILABLE, f"local data plane: {e}")
            return False
        self.pending.add(seq)
        return True

    def _read_one(self, timeout_s: float | None) -> expert_pb2.ExpertResult:
        result = expert_pb2.ExpertResult()
        result.ParseFromString(bytes(recv_frame(self.sock, timeout_s=timeout_s)))
        self.pending.discard(result.seq)
        self.arrived[result.seq] = result
        while len(self.arrived) > MAX_UNCLAIMED:  # answers nobody will ask for (their callers gave up)
            self.arrived.pop(next(iter(self.arrived)))
        return result

    def wait(self, seq: int, timeout_s: float | None) -> expert_pb2.ExpertResult:
        if seq in self.arrived:
            return self.arrived.pop(seq)
        if self.broken is not None:
            raise self.broken
        try:
            while True:
                result = self._read_one(timeout_s)
                if result.seq == seq:
                    return self.arrived.pop(seq)
        except TimeoutError:
            self._break(grpc.StatusCode.DEADLINE_EXCEEDED, "did not answer before the deadline")
        except (OSError, DecodeError) as e:
            self._break(grpc.StatusCode.UNAVAILABLE, f"local data plane: {e}")
        raise self.broken

    def _break(self, code: grpc.StatusCode, details: str) -> None:
        self.broken = RemoteExpertError(code, f"expert service {self.address}: {details}")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
