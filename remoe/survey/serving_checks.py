"""The survey's serving checks of a model type's tiny checkpoint, beyond LocalEngine's own generate:
- batched: staggered requests sharing decode steps in the backbone's BatchEngine (in-process, every type whose
  cache can be batched);
- `remoe up`: a real local cluster (gateway, backbone, two expert services, half of each MoE layer's experts in
  serverless functions, real gRPC between processes), on a representative subset (CLUSTER_TYPES): a cluster costs
  tens of seconds, and each expert-math family and cache kind needs only one.
Each returns token lists for the survey to compare with transformers' own.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# One type per expert-math family, cache kind and loader path that the other checks found exact: what it covers.
CLUSTER_TYPES: dict[str, str] = {
    "deepseek_v3": "MLA attention, grouped routing with a score-correction bias, shared experts",
    "inkling2_text": "experts through their own class (act(gate, up)), fused experts interleaved on disk",
    "lfm2_moe": "short-convolution layers in a hybrid cache",
    "minimax": "a cache class of the model's own (generate does not give it a DynamicCache)",
    "qwen3_next": "gated-delta-net linear attention in a hybrid cache, a shared expert",
    "bailing_hybrid": "backbone tensors transformers converts on load (q/k/v convs merged)",
    "gpt_oss": "experts through their own class (clamped SwiGLU with biases), sliding-window layers",
    "granitemoehybrid": "Mamba-2 layers in a hybrid cache",
    "deepseek_v32": "sparse-attention (DSA) indexer keys in its cache layers",
    "deepseek_v4": "compressed attention cache layers of its own, expert keys matched by a regular expression",
}
_STARTUP_S = 120.0
BATCHED_LENGTHS = (16, 8, 12)  # new tokens of the staggered requests (the first as long as the survey's)


def batched_tokens(model, device, ids: list[int], lengths: tuple[int, ...] = BATCHED_LENGTHS) -> list[list[int]]:
    """Requests of the same prompt, each `lengths[i]` greedy tokens (EOS ignored), joining 20 ms apart, through
    one BatchEngine whose small prefill chunk makes a prompt span several steps beside the others' decodes."""
    from remoe.model.batch_engine import BatchEngine
    from remoe.model.batch_request import BatchRequest, BatchSettings
    from remoe.model.generation import SamplingParams

    engine = BatchEngine(model, device, BatchSettings(max_requests=len(lengths), prefill_chunk=4))
    got: list[list[int]] = [[] for _ in lengths]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        time.sleep(0.02 * i)
        request = BatchRequest(f"r{i}", ids, SamplingParams(max_new_tokens=lengths[i], stop_on_eos=False), set())
        try:
            got[i] = list(engine.submit(request))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(lengths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=_STARTUP_S)
    engine.close()
    if errors:
        raise errors[0]
    if max(engine.step_requests, default=0) < 2:
        raise RuntimeError("no decode step carried two requests")
    return got


def cluster_tokens(checkpoint: Path, ids: list[int], tokens: int) -> tuple[list[int], list[list[int]]]:
    """One request of `tokens` greedy tokens (EOS ignored), then two concurrent ones (a decode step they may
    share), through `remoe up` with two expert services and functions. Returns (the first's tokens, the others')."""
    from remoe.cluster import LocalCluster
    from remoe.sdk import Client

    with LocalCluster(checkpoint, port=0, remote_ratio=0.5) as cluster:
        client = Client(cluster.address)
        _wait_for_functions(client)
        result = client.generate(token_ids=ids, max_new_tokens=tokens, ignore_eos=True)
        _check_placement(json.loads(result.usage.plan))
        first = result.token_ids
        lengths = [tokens, tokens // 2]
        with ThreadPoolExecutor(len(lengths)) as pool:
            futures = [pool.submit(client.generate, token_ids=ids, max_new_tokens=n, ignore_eos=True) for n in lengths]
            concurrent = [f.result(timeout=_STARTUP_S).token_ids for f in futures]
    return list(first), [list(c) for c in concurrent]


def _check_placement(plan: dict) -> None:
    services = [d for d in plan if not d.startswith("function:")]
    if len(services) != 2 or len(plan) == len(services):
        raise RuntimeError(f"the plan should use two expert services and functions, not {sorted(plan)}")


def _wait_for_functions(client) -> None:
    """The first request pre-warms the functions; wait until each serves, so the checked requests reach them."""
    client.generate(token_ids=[1], max_new_tokens=1)
    deadline = time.monotonic() + _STARTUP_S
    while not all(f.state == "warm" for f in client.status().backbone.functions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster's functions did not start within {_STARTUP_S:.0f} s")
        time.sleep(0.1)
