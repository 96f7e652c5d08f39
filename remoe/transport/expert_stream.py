"""Client end of `ExpertService.Compute`: long-lived bidirectional streams to one destination.

Each calling thread (the backbone runs one request per thread) gets its own stream, so requests do not wait
behind each other and the server answers each stream in order without thread hand-offs. Each batch gets a
sequence number and a Future; a reader thread matches results to futures, which lets the caller wait with a
deadline. When a stream breaks, its pending batches fail with its status and the next submit reopens it.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future

import grpc

from remoe.errors import RemoeError
from remoe.proto import expert_pb2, expert_pb2_grpc
from remoe.transport.channel import insecure_channel

_CLOSE = object()


class RemoteExpertError(RemoeError):
    """A destination could not compute a batch; carries the gRPC status to pass on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    """One open Compute call: its outgoing queue and its batches awaiting results."""

    def __init__(self, stub: expert_pb2_grpc.ExpertServiceStub, address: str) -> None:
        self.address = address
        self.outgoing: queue.Queue = queue.Queue()
        self.pending: dict[int, Future] = {}
        self.lock = threading.Lock()
        self.broken: RemoteExpertError | None = None
        self.call = stub.Compute(self._requests())
        threading.Thread(target=self._read, name=f"expert-stream-{address}", daemon=True).start()

    def _requests(self):
        while (item := self.outgoing.get()) is not _CLOSE:
            yield item

    def _read(self) -> None:
        try:
            for result in self.call:
                with self.lock:
                    future = self.pending.pop(result.seq, None)
                if future is not None:
                    future.set_result(result)
            error = RemoteExpertError(grpc.StatusCode.UNAVAILABLE, f"expert service {self.address} closed the stream")
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNAVAILABLE
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            error = RemoteExpertError(code, f"expert service {self.address}: {details}")
        self._fail_all(error)

    def _fail_all(self, error: RemoteExpertError) -> None:
        with self.lock:
            self.broken = error
            pending, self.pending = self.pending, {}
        self.outgoing.put(_CLOSE)
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def submit(self, seq: int, batch: expert_pb2.ExpertBatch) -> Future | None:
        future: Future = Future()
        with self.lock:
            if self.broken is not None:
                return None
            self.pending[seq] = future
        self.outgoing.put(batch)
        return future

    def forget(self, seq: int) -> None:
        with self.lock:
            self.pending.pop(seq, None)

    def close(self) -> None:
        self.outgoing.put(_CLOSE)
        self.call.cancel()


class ExpertStream:
    """submit(batch) -> Future[ExpertResult], over a stream to `address` that reopens after a failure."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = insecure_channel(address)
        self._stub = expert_pb2_grpc.ExpertServiceStub(self._channel)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._local = threading.local()  # .stream: this thread's _Stream
        self._all: list[_Stream] = []

    def _thread_stream(self) -> _Stream:
        stream: _Stream | None = getattr(self._local, "stream", None)
        if stream is None or stream.broken is not None:
            stream = _Stream(self._stub, self.address)
            self._local.stream = stream
            with self._lock:
                self._all = [s for s in self._all if s.broken is None] + [stream]
        return stream

    def submit(self, batch: expert_pb2.ExpertBatch) -> tuple[int, Future]:
        """Send a batch; its Future holds the result, or the RemoteExpertError that stopped it."""
        seq = next(self._seq)
        batch.seq = seq
        for _ in range(2):  # a stream found broken is replaced once
            future = self._thread_stream().submit(seq, batch)
            if future is not None:
                return seq, future
        failed: Future = Future()
        failed.set_exception(
            RemoteExpertError(grpc.StatusCode.UNAVAILABLE, f"expert service {self.address}: stream keeps breaking")
        )
        return seq, failed

    def forget(self, seq: int) -> None:
        """Drop a batch whose caller stopped waiting (deadline); a late result is then ignored."""
        stream: _Stream | None = getattr(self._local, "stream", None)
        if stream is not None:
            stream.forget(seq)

    def stats(self, timeout: float) -> expert_pb2.StatsReply:
        return expert_pb2_grpc.ExpertServiceStub(self._channel).Stats(expert_pb2.StatsRequest(), timeout=timeout)

    def close(self) -> None:
        with self._lock:
            streams, self._all = self._all, []
        for stream in streams:
            stream.close()
        self._channel.close()
