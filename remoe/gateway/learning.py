"""After a request: its forecast scored against the experts it really used (into its usage), and its activation
sent to the predictor, which learns from it (in the background: the answer does not wait)."""

from __future__ import annotations

import numpy as np

from remoe.gateway.background import BackgroundCalls
from remoe.predictor.divergence import mean_js
from remoe.proto import predictor_pb2
from remoe.transport import tensor_codec

RECORD_TIMEOUT_S = 10.0


class Learning:
    def __init__(self, predictor, background: BackgroundCalls) -> None:
        self.predictor = predictor  # a PredictorService stub, or None
        self.background = background

    def learn(self, prompt: str, ids: list[int], usage, forecast) -> None:
        act = usage.activations
        if forecast is not None and act.prefill:
            shape = (len(act.moe_layers), act.num_experts)
            predicted = tensor_codec.decode(forecast.frequency, "frequency", dtype="float32", rank=2).numpy()
            if predicted.shape == shape:
                actual = np.asarray(act.prefill, dtype=np.float64).reshape(shape)
                usage.forecast_source = forecast.source
                usage.forecast_js = mean_js(predicted.astype(np.float64), actual)
        if self.predictor is None or not act.prefill:
            return
        record = predictor_pb2.RecordRequest(
            prompt=prompt, token_ids=ids, activations=act, n_out=usage.completion_tokens
        )
        self.background.hold(self.predictor.Record.future(record, timeout=RECORD_TIMEOUT_S))
