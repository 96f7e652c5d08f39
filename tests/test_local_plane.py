"""The co-located data plane: framing limits, bad frames, deadlines, permissions, and a cluster using it."""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
import time

import grpc
import pytest
import torch
from transformers import AutoTokenizer

from remoe.checkpoint.weights import open_weights
from remoe.cluster import LocalCluster
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.servicer import ExpertServicer
from remoe.proto import expert_pb2
from remoe.sdk import Client
from remoe.transport import tensor_codec
from remoe.transport.channel import MAX_MESSAGE_BYTES
from remoe.transport.expert_stream import RemoteExpertError
from remoe.transport.local_plane import LocalPlaneServer, PlaneConnection, recv_frame, send_frame, socket_dir
from tests.conftest import PROMPT, reference_generate


@pytest.fixture
def plane(tiny_model):
    weights = open_weights(tiny_model("olmoe"))
    servicer = ExpertServicer(LocalExpertExecutor(weights), "plane-test")
    server = LocalPlaneServer("plane-test", servicer._answer, max_connections=4)
    yield server, weights
    server.close()


def _batch(weights, seq: int = 1, layer: int = 0) -> expert_pb2.ExpertBatch:
    g = torch.Generator().manual_seed(seq)
    return expert_pb2.ExpertBatch(
        seq=seq,
        layer=layer,
        hidden_states=tensor_codec.encode(torch.randn(2, weights.arch.hidden_size, generator=g)),
        top_k_index=tensor_codec.encode(torch.tensor([[0, 3, 5], [1, -1, 7]])),
        top_k_weights=tensor_codec.encode(torch.rand(2, 3, generator=g)),
    )


def test_a_batch_through_the_plane_equals_the_executor(plane):
    server, weights = plane
    conn = PlaneConnection(str(server.path), "plane-test")
    batches = [_batch(weights, seq) for seq in (1, 2, 3)]
    for seq, batch in enumerate(batches, 1):
        assert conn.submit(seq, batch)
    executor = LocalExpertExecutor(weights)
    for seq in (3, 1, 2):  # answers read out of order are kept for their own wait
        result = conn.wait(seq, timeout_s=10)
        b = batches[seq - 1]
        want = executor.compute(
            0,
            tensor_codec.decode(b.hidden_states),
            tensor_codec.decode(b.top_k_index),
            tensor_codec.decode(b.top_k_weights),
        )
        assert result.seq == seq and result.status_code == 0
        torch.testing.assert_close(tensor_codec.decode(result.output), want, rtol=0, atol=0)
    assert server.batches == 3
    bad = conn.submit(4, _batch(weights, 4, layer=57)) and conn.wait(4, timeout_s=10)
    assert bad.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "layer 57" in bad.error
    conn.close()


def test_an_oversized_or_garbled_frame_closes_only_its_connection(plane):
    server, weights = plane
    for garbage in (struct.pack("<I", MAX_MESSAGE_BYTES + 1), struct.pack("<I", 5) + b"\xff\xff\xff\xff\xff"):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(server.path))
        raw.sendall(garbage)
        raw.settimeout(10)
        assert raw.recv(1) == b""  # closed without an answer (nothing allocated for the claimed length)
        raw.close()
    conn = PlaneConnection(str(server.path), "plane-test")  # the server keeps serving others
    assert conn.submit(1, _batch(weights)) and conn.wait(1, timeout_s=10).status_code == 0


def test_recv_frame_refuses_a_length_over_the_limit_before_reading_it():
    a, b = socket.socketpair()
    a.sendall(struct.pack("<I", 1000))
    with pytest.raises(ConnectionError, match="exceeds the limit of 999"):
        recv_frame(b, max_bytes=999)
    send_frame(a, b"hello", timeout_s=5)
    assert bytes(recv_frame(b)) == b"hello"


def test_a_slow_answer_past_the_deadline_is_deadline_exceeded():
    release = threading.Event()

    def slow(batch):
        release.wait(10)
        return expert_pb2.ExpertResult(seq=batch.seq)

    server = LocalPlaneServer("plane-slow", slow, max_connections=2)
    try:
        conn = PlaneConnection(str(server.path), "plane-slow")
        conn.submit(1, expert_pb2.ExpertBatch(seq=1))
        start = time.monotonic()
        with pytest.raises(RemoteExpertError) as err:
            conn.wait(1, timeout_s=0.2)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 5
        assert not conn.submit(2, expert_pb2.ExpertBatch(seq=2))  # broken: the caller opens a new one
    finally:
        release.set()
        server.close()


def test_the_socket_is_its_owners_alone(plane):
    server, _ = plane
    assert stat.S_IMODE(os.stat(socket_dir()).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    path = server.path
    server.close()
    assert not path.exists()


@pytest.mark.processes
def test_a_cluster_sends_through_the_plane_and_grpc_gives_the_same_tokens(tiny_model, reference):
    path = tiny_model("qwen3_moe")
    tokens = {}
    for transport in ("auto", "grpc"):
        with LocalCluster(path, port=0, env={"REMOE_BACKBONE_EXPERT_TRANSPORT": transport}) as cluster:
            client = Client(cluster.address)
            result = client.generate(prompt=PROMPT, max_new_tokens=12)
            tokens[transport] = result.token_ids
            stats = [d.stats for d in client.status().backbone.destinations]
        assert sum(s.batches for s in stats) > 0
        planed = sum(s.local_plane_batches for s in stats)
        assert planed == (sum(s.batches for s in stats) if transport == "auto" else 0), transport
    assert tokens["auto"] == tokens["grpc"]
    prompt_ids = AutoTokenizer.from_pretrained(path).encode(PROMPT)
    assert tokens["auto"] == reference_generate(reference("qwen3_moe"), prompt_ids, 12)


def test_an_abandoned_big_answer_does_not_deadlock_the_next_big_batch(plane):
    """A caller that gave up on a batch (its request failed mid-layer) leaves an answer owed; the next batch on
    that connection must not block sending while the server blocks sending the old answer (frames over the
    socket's buffer both ways)."""
    server, weights = plane
    big = _big_batch(weights, 1)
    conn = PlaneConnection(str(server.path), "plane-test")
    assert conn.submit(1, big)  # never waited for
    time.sleep(0.5)  # the server is now blocked sending its answer
    big.seq = 2
    done = threading.Event()
    threading.Thread(target=lambda: (conn.submit(2, big), conn.wait(2, timeout_s=30), done.set()), daemon=True).start()
    assert done.wait(30), "the second batch deadlocked behind the first's unread answer"


def _big_batch(weights, seq: int, rows: int = 4000) -> expert_pb2.ExpertBatch:
    """~1 MB of hidden states: more than a unix socket buffers, so its send blocks until the peer reads."""
    return expert_pb2.ExpertBatch(
        seq=seq,
        layer=0,
        hidden_states=tensor_codec.encode(torch.randn(rows, weights.arch.hidden_size)),
        top_k_index=tensor_codec.encode(torch.randint(0, 8, (rows, 1))),
        top_k_weights=tensor_codec.encode(torch.ones(rows, 1)),
    )


def test_a_client_that_stops_reading_loses_its_connection_not_a_server_slot(plane, monkeypatch):
    monkeypatch.setattr("remoe.transport.local_plane.SEND_TIMEOUT_S", 0.5)
    server, weights = plane
    stuck = [PlaneConnection(str(server.path), "plane-test") for _ in range(4)]  # every slot, none reading
    for conn in stuck:
        assert conn.submit(1, _big_batch(weights, 1))
    time.sleep(2.0)  # each server thread gave up sending its answer and closed its connection
    fresh = PlaneConnection(str(server.path), "plane-test")
    assert fresh.submit(1, _batch(weights)) and fresh.wait(1, timeout_s=10).status_code == 0


def test_a_server_that_stops_reading_fails_the_submit_instead_of_hanging(monkeypatch, tiny_model):
    monkeypatch.setattr("remoe.transport.local_plane.SEND_TIMEOUT_S", 0.5)
    weights = open_weights(tiny_model("olmoe"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = socket_dir() / f"plane-deaf-{os.getpid()}.sock"
    path.unlink(missing_ok=True)
    listener.bind(str(path))
    listener.listen(1)  # accepts, never reads
    try:
        conn = PlaneConnection(str(path), "plane-deaf")
        start = time.monotonic()
        assert not conn.submit(1, _big_batch(weights, 1))
        assert time.monotonic() - start < 10
        assert conn.broken is not None and conn.broken.code == grpc.StatusCode.UNAVAILABLE
    finally:
        listener.close()
        path.unlink(missing_ok=True)
