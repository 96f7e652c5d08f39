"""Predictor service: SPS forecasts (Predict) and learning from finished requests (Record).

python -m remoe.services.predictor --model DIR --qdrant-path DIR [--redis-url redis://127.0.0.1:6379/0]
python -m remoe.services.predictor --model DIR --qdrant-url http://qdrant:6333 --redis-url ...
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: its idle threads must not spin, or they take the cores from ONNX Runtime's
# embedding (measured on 2 cores: 6.6 ms per prompt with passive waiting, 10.9 ms with spinning threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from remoe.checkpoint.weights import open_weights  # noqa: E402
from remoe.constants import MAX_PROMPT_CHARS  # noqa: E402
from remoe.metrics.exposition import serve_metrics  # noqa: E402
from remoe.metrics.services import RequestMetrics  # noqa: E402
from remoe.model.activations import ActivationRecord  # noqa: E402
from remoe.ports import side_port_file  # noqa: E402
from remoe.predictor.embedding import PromptEmbedder  # noqa: E402
from remoe.predictor.predictor import Predictor, SPSConfig  # noqa: E402
from remoe.predictor.prior import GlobalPrior, model_id  # noqa: E402
from remoe.predictor.soft_cosine import SCS_TOKENS, SoftCosine  # noqa: E402
from remoe.predictor.store import PromptStore  # noqa: E402
from remoe.proto import predictor_pb2, predictor_pb2_grpc  # noqa: E402
from remoe.server import startup
from remoe.server.common import Server, setup_logging  # noqa: E402
from remoe.settings import PredictorSettings, load_settings  # noqa: E402
from remoe.transport import tensor_codec  # noqa: E402

log = logging.getLogger(__name__)


class PredictorServicer(predictor_pb2_grpc.PredictorServiceServicer):
    def __init__(self, predictor: Predictor, moe_layers: list[int], num_experts: int, top_k: int) -> None:
        self.predictor = predictor
        self.moe_layers = moe_layers
        self.num_experts = num_experts
        self.top_k = top_k
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RequestMetrics("predictor", self.registry)  # Predict's outcome: the forecast's source

    def _check_prompt(self, prompt: str, context) -> None:
        if not prompt:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the prompt is over {MAX_PROMPT_CHARS} characters")

    def Predict(self, request, context):
        self._check_prompt(request.prompt, context)
        with self.metrics.time("Predict") as call:
            forecast = self.predictor.predict(request.prompt, list(request.token_ids)[:SCS_TOKENS])
            call["outcome"] = forecast.source
        return predictor_pb2.PredictReply(
            frequency=tensor_codec.encode(torch.as_tensor(forecast.frequency, dtype=torch.float32)),
            moe_layers=self.moe_layers,
            confidence=forecast.confidence,
            source=forecast.source,
            neighbours=forecast.neighbours,
        )

    def Record(self, request, context):
        self._check_prompt(request.prompt, context)
        act = request.activations
        shape = (len(self.moe_layers), self.num_experts)
        if list(act.moe_layers) != self.moe_layers or act.num_experts != self.num_experts:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"activations are for layers {list(act.moe_layers)} x {act.num_experts} experts; this model has "
                f"{self.moe_layers} x {self.num_experts}",
            )
        if len(act.prefill) != shape[0] * shape[1] or (act.decode and len(act.decode) != shape[0] * shape[1]):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"activation counts are not {shape[0]} x {shape[1]}")
        prefill = np.asarray(act.prefill, dtype=np.int64).reshape(shape)
        if (prefill < 0).any():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "negative activation counts")
        decode = np.asarray(act.decode, dtype=np.int64).reshape(shape) if act.decode else None
        n_in = int(prefill[0].sum()) // max(1, self.top_k)
        record = ActivationRecord(self.moe_layers, self.num_experts, self.top_k, prefill, decode, n_in, request.n_out)
        with self.metrics.time("Record"):
            self.predictor.record(request.prompt, list(request.token_ids)[:SCS_TOKENS], record)
        return predictor_pb2.RecordReply()


def build_predictor(model_dir: str, qdrant_path: str | None, qdrant_url: str | None, redis_url: str | None):
    weights = open_weights(model_dir)
    arch = weights.arch
    embeddings_name = next(n for n, m in arch.skeleton.named_modules() if m is arch.skeleton.get_input_embeddings())
    soft_cosine = SoftCosine(weights.read_backbone(f"{embeddings_name}.weight"))
    key = model_id(arch.model_type, weights.path)
    store = PromptStore.open(key, path=qdrant_path, url=qdrant_url)
    prior = GlobalPrior.from_url(redis_url, key, len(arch.layer_indices), arch.num_experts) if redis_url else None
    predictor = Predictor(
        arch.layer_indices, arch.num_experts, PromptEmbedder(), soft_cosine, store, prior, SPSConfig()
    )
    return predictor, arch


def main(argv: list[str] | None = None) -> None:
    startup.begin()  # the module's imports are done: what follows is this service's own start
    s = load_settings(PredictorSettings, argv, "python -m remoe.services.predictor", __doc__.split("\n")[0])
    setup_logging("predictor", s.verbose)
    server = Server("predictor", s.host, s.port, s.workers)
    qdrant_path = str(s.qdrant_path) if s.qdrant_path else None
    with startup.step("embedder, store and prior"):
        predictor, arch = build_predictor(str(s.model), qdrant_path, s.qdrant_url, s.redis_url)
    servicer = PredictorServicer(predictor, arch.layer_indices, arch.num_experts, arch.top_k)
    predictor_pb2_grpc.add_PredictorServiceServicer_to_server(servicer, server.server)
    server.add(predictor_pb2.DESCRIPTOR.services_by_name["PredictorService"].full_name)
    if s.metrics_port is not None:
        serve_metrics(servicer.registry, s.host, s.metrics_port, "predictor", side_port_file(s.ready_file, "metrics"))
    server.start(s.ready_file)
    server.wait_for_signal()


if __name__ == "__main__":
    main()
