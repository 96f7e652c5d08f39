"""Client end of `ExpertService.Compute`: long-lived bidirectional streams to one destination.

A destination on this host that advertises a co-located data plane in Stats (remoe/transport/local_plane.py)
gets the same messages over its unix socket instead; everything below holds for both.

Each calling thread (the backbone runs one request per thread) gets its own stream, so requests do not wait
behind each other and the server answers each stream in order. The thread that submits a batch reads its
answer itself, on its own thread: no reader thread, futures or locks between the answer and the caller (each
hand-off costs tens of microseconds per MoE layer). A waiting caller's deadline is kept by one watchdog
thread per process, which cancels a stream whose caller has waited past it. When a stream breaks, its
pending batches fail with its status and the next submit reopens it.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
import weakref

import grpc

from remoe.proto import expert_pb2, expert_pb2_grpc
from remoe.transport.channel import insecure_channel
from remoe.transport.local_plane import MAX_UNCLAIMED, PlaneConnection
from remoe.transport.remote_error import RemoteExpertError

__all__ = ["ExpertStream", "Pending", "RemoteExpertError"]
log = logging.getLogger(__name__)
_CLOSE = object()
WATCHDOG_PERIOD_S = 0.05  # how late past its deadline a stuck wait is cancelled, at most
PLANE_RECHECK_S = 5.0  # after a failed look-up, ask the service for its data plane again this much later
PLANE_LOOKUP_TIMEOUT_S = 2.0


class _Watchdog:
    """Cancels streams whose reader waits past its deadline (grpc's response iterator takes no timeout)."""

    def __init__(self) -> None:
        self._streams: weakref.WeakSet[_Stream] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="expert-stream-watchdog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCHDOG_PERIOD_S)
            now = time.monotonic()
            with self._lock:
                late = [s for s in self._streams if s.wait_deadline is not None and now > s.wait_deadline]
            for stream in late:
                stream.expire()


_watchdog = _Watchdog()


class _Stream:
    """One open Compute call, read only by the thread that owns it."""

    def __init__(self, stub: expert_pb2_grpc.ExpertServiceStub, address: str) -> None:
        self.address = address
        self.outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: set[int] = set()  # submitted, not yet answered
        self.arrived: dict[int, expert_pb2.ExpertResult] = {}  # answered while waiting for another seq
        self.broken: RemoteExpertError | None = None
        self.wait_deadline: float | None = None  # monotonic; set while the owner waits
        self._expired = False
        self.call = stub.Compute(self._requests())
        _watchdog.watch(self)

    def _requests(self):
        while (item := self.outgoing.get()) is not _CLOSE:
            yield item

    def submit(self, seq: int, batch: expert_pb2.ExpertBatch) -> bool:
        if self.broken is None and not self.pending and self.call.done():  # it ended while idle (a restart)
            self._break(self._closed("ended the stream"))
        if self.broken is not None:
            return False
        self.pending.add(seq)
        self.outgoing.put(batch)
        return True

    def wait(self, seq: int, timeout_s: float | None) -> expert_pb2.ExpertResult:
        """The answer to `seq`, read off the stream on this thread; RemoteExpertError if the stream fails first
        or `timeout_s` passes (the stream is then cancelled: its caller has given up on the request)."""
        if seq in self.arrived:
            return self.arrived.pop(seq)
        if self.broken is not None:
            raise self.broken
        self.wait_deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        try:
            while True:
                result = next(self.call)
                self.pending.discard(result.seq)
                if result.seq == seq:
                    return result
                self.arrived[result.seq] = result  # another batch of this thread (a fallback to the same service)
                while len(self.arrived) > MAX_UNCLAIMED:  # answers nobody will ask for (their callers gave up)
                    self.arrived.pop(next(iter(self.arrived)))
        except StopIteration:
            self._break(self._closed("closed the stream"))
        except grpc.RpcError as e:
            if self._expired:
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "did not answer before the deadline"
            elif isinstance(e, grpc.Call):
                code, details = e.code(), e.details()
            else:
                code, details = grpc.StatusCode.UNAVAILABLE, str(e)
            self._break(RemoteExpertError(code, f"expert service {self.address}: {details}"))
        finally:
            self.wait_deadline = None
        raise self.broken

    def _closed(self, what: str) -> RemoteExpertError:
        return RemoteExpertError(grpc.StatusCode.UNAVAILABLE, f"expert service {self.address} {what}")

    def expire(self) -> None:
        """The watchdog's: the owner waited past its deadline."""
        self._expired = True
        self.call.cancel()

    def _break(self, error: RemoteExpertError) -> None:
        self.broken = error
        self.outgoing.put(_CLOSE)

    def close(self) -> None:
        self.outgoing.put(_CLOSE)
        self.call.cancel()


class Pending:
    """A submitted batch; `result(timeout)` reads its answer on the calling thread (the one that submitted)."""

    def __init__(
        self, stream: _Stream | PlaneConnection | None, seq: int, error: RemoteExpertError | None = None
    ) -> None:
        self._stream, self.seq, self._error = stream, seq, error

    def result(self, timeout: float | None = None) -> expert_pb2.ExpertResult:
        if self._error is not None:
            raise self._error
        return self._stream.wait(self.seq, timeout)


class ExpertStream:
    """submit(batch) -> (seq, Pending), over a stream to `address` that reopens after a failure."""

    def __init__(self, address: str, local_plane: bool = False) -> None:
        """`local_plane`: use the destination's co-located data plane when it offers one on this host."""
        self.address = address
        self.local_plane = local_plane
        self._channel = insecure_channel(address)
        self._stub = expert_pb2_grpc.ExpertServiceStub(self._channel)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._local = threading.local()  # .stream: this thread's _Stream or PlaneConnection
        self._all: list[_Stream | PlaneConnection] = []
        self._plane_path: str | None = None
        self._plane_checked = -PLANE_RECHECK_S  # monotonic time of the last look-up

    @property
    def plane_path(self) -> str | None:
        """The data plane's socket this stream uses (None: gRPC)."""
        return self._plane_path

    def _lookup_plane(self) -> str | None:
        """The service's data-plane socket if it has one on this host; asked again PLANE_RECHECK_S later."""
        with self._lock:
            if time.monotonic() - self._plane_checked < PLANE_RECHECK_S:
                return self._plane_path
            self._plane_checked = time.monotonic()
            try:
                path = self.stats(timeout=PLANE_LOOKUP_TIMEOUT_S).local_plane
            except grpc.RpcError:
                path = ""
            self._plane_path = path if path and os.path.exists(path) else None
            return self._plane_path

    def _open(self) -> _Stream | PlaneConnection:
        path = self._lookup_plane() if self.local_plane else None
        if path is not None:
            try:
                return PlaneConnection(path, self.address)
            except OSError as e:  # the service is gone or restarting: gRPC until the next look-up
                log.info("data plane %s of %s refused (%s); using gRPC", path, self.address, e)
                with self._lock:
                    self._plane_path = None
        return _Stream(self._stub, self.address)

    def _thread_stream(self) -> _Stream | PlaneConnection:
        stream: _Stream | PlaneConnection | None = getattr(self._local, "stream", None)
        if stream is None or stream.broken is not None:
            if isinstance(stream, PlaneConnection):
                with self._lock:
                    self._plane_checked = -PLANE_RECHECK_S  # it broke (a restart?): ask again now
            stream = self._open()
            self._local.stream = stream
            with self._lock:
                self._all = [s for s in self._all if s.broken is None] + [stream]
        return stream

    def submit(self, batch: expert_pb2.ExpertBatch) -> tuple[int, Pending]:
        """Send a batch; its Pending gives the result, or raises the RemoteExpertError that stopped it."""
        seq = next(self._seq)
        batch.seq = seq
        for _ in range(2):  # a stream found broken is replaced once
            stream = self._thread_stream()
            if stream.submit(seq, batch):
                return seq, Pending(stream, seq)
        error = RemoteExpertError(grpc.StatusCode.UNAVAILABLE, f"expert service {self.address}: stream keeps breaking")
        return seq, Pending(None, seq, error)

    def stats(self, timeout: float) -> expert_pb2.StatsReply:
        return expert_pb2_grpc.ExpertServiceStub(self._channel).Stats(expert_pb2.StatsRequest(), timeout=timeout)

    def close(self) -> None:
        with self._lock:
            streams, self._all = self._all, []
        for stream in streams:
            stream.close()
        self._channel.close()
