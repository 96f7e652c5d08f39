"""The backbone's side of the wire contract: sampling parameters from a request, a request's activations and its
share of batched forwards into its Usage."""

from __future__ import annotations

from remoe.model.activations import ActivationRecorder
from remoe.model.batch_request import BatchRequest
from remoe.model.generation import SamplingParams
from remoe.proto import common_pb2


def sampling_from_proto(msg: common_pb2.SamplingParams) -> SamplingParams:
    """Raises ValueError naming the bad field."""
    return SamplingParams(
        max_new_tokens=int(msg.max_new_tokens),
        temperature=float(msg.temperature),
        top_p=float(msg.top_p) if msg.top_p else 1.0,
        seed=int(msg.seed) if msg.HasField("seed") else None,
        stop_on_eos=not msg.ignore_eos,
    )


def activation_summary(recorder: ActivationRecorder) -> common_pb2.ActivationSummary:
    record = recorder.record
    return common_pb2.ActivationSummary(
        moe_layers=record.moe_layers,
        num_experts=record.num_experts,
        top_k=record.top_k,
        prefill=record.prefill.flatten().tolist(),
        decode=record.decode.flatten().tolist(),
    )


def add_batch_usage(usage: common_pb2.Usage, job: BatchRequest) -> None:
    """What the request's record says of the forwards it shared: its seconds, steps and company."""
    usage.backbone_s = job.backbone_s
    usage.steps = job.steps
    usage.shared_steps = job.shared_steps
    usage.mean_step_requests = 1 + job.peers / job.steps if job.steps else 0.0
