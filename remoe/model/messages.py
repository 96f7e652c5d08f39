"""The backbone's side of the wire contract: sampling parameters from a request, token log-probabilities, a
request's activations and its share of batched forwards into its Usage."""

from __future__ import annotations

from remoe.model.activations import ActivationRecorder
from remoe.model.batch_request import BatchRequest
from remoe.model.generation import GenerationTrace, SamplingParams
from remoe.model.logprobs import TokenLogprob
from remoe.proto import backbone_pb2, common_pb2


def sampling_from_proto(msg: common_pb2.SamplingParams) -> SamplingParams:
    """Raises ValueError naming the bad field."""
    return SamplingParams(
        max_new_tokens=int(msg.max_new_tokens),
        temperature=float(msg.temperature),
        top_p=float(msg.top_p) if msg.top_p else 1.0,
        seed=int(msg.seed) if msg.HasField("seed") else None,
        stop_on_eos=not msg.ignore_eos,
        logprobs=int(msg.logprobs) if msg.HasField("logprobs") else None,
        echo=msg.echo,
    )


def logprob_to_proto(item: TokenLogprob) -> common_pb2.TokenLogprob:
    return common_pb2.TokenLogprob(
        token_id=item.token_id, logprob=item.logprob, top_ids=item.top_ids, top_logprobs=item.top_logprobs
    )


def token_chunk(token: int, n: int, trace: GenerationTrace, params: SamplingParams) -> backbone_pb2.BackboneChunk:
    """The chunk of a request's n-th new token, with its log-probability (which the step put in the trace before
    handing out the token) and, on an echo's first chunk, the prompt's."""
    chunk = backbone_pb2.BackboneChunk(token_id=token)
    if params.logprobs is not None:
        chunk.logprob.CopyFrom(logprob_to_proto(trace.logprobs[n]))
    if n == 0 and params.echo:
        chunk.prompt_logprobs.extend(logprob_to_proto(p) for p in trace.prompt_logprobs)
    return chunk


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
