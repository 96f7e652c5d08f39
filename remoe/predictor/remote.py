"""A forecast from a running predictor service, checked against the model's shape (for tools: `remoe plan`)."""

from __future__ import annotations

import grpc
import numpy as np

from remoe.errors import RemoeError
from remoe.proto import predictor_pb2, predictor_pb2_grpc
from remoe.transport import tensor_codec
from remoe.transport.channel import insecure_channel

PREDICT_TIMEOUT_S = 10.0


def forecast_from(address: str, prompt: str, ids: list[int], layers: int, experts: int) -> tuple[np.ndarray, str]:
    """([L, E] float64 frequency, where it came from); RemoeError when the service fails or forecasts another
    shape."""
    stub = predictor_pb2_grpc.PredictorServiceStub(insecure_channel(address))
    try:
        reply = stub.Predict(predictor_pb2.PredictRequest(prompt=prompt, token_ids=ids), timeout=PREDICT_TIMEOUT_S)
    except grpc.RpcError as e:
        raise RemoeError(f"predictor {address}: {e.code().name}: {e.details()}") from None
    frequency = tensor_codec.decode(reply.frequency, "frequency", dtype="float32", rank=2).numpy()
    if frequency.shape != (layers, experts):
        raise RemoeError(f"the predictor forecasts {frequency.shape}, the model is {layers}x{experts}")
    return frequency.astype(np.float64), f"{reply.source} (predictor {address})"
