"""gRPC channel and server options shared by every Remoe process."""

from __future__ import annotations

import json

import grpc

from remoe.constants import MAX_TENSOR_BYTES

# Three tensors of the size limit plus headers fit in one message. (Not from tensor_codec: a service that sends no
# tensor, the scheduler, would import torch for it and hold ~0.3 GB more.)
MAX_MESSAGE_BYTES = 3 * MAX_TENSOR_BYTES + 1024 * 1024

# Retries happen at one layer only, the client's: retrying inside the cluster as well would multiply attempts.
_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "remoe.v1.GatewayService"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

# Between Remoe's own services.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
    # Ping idle long-lived expert streams so a dead peer is noticed; the servers below allow it.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # A restarted service is reconnected within 2 s (gRPC's default backoff grows to 120 s).
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
# The SDK's channel to the gateway: UNAVAILABLE is retried with backoff by gRPC itself.
CLIENT_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(_RETRY_POLICY)),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Without these, a server answers the clients' keepalive pings on idle streams with GOAWAY
    # ENHANCE_YOUR_CALM ("too_many_pings") and the stream breaks.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
]


def insecure_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
