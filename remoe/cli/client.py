"""`remoe status`, `remoe generate`: a running cluster through the SDK (or in-process with --model)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from remoe.cli.common import add_connection_flags
from remoe.errors import RemoeError


def _connection(args: argparse.Namespace) -> dict:
    return {
        "token": args.token or os.environ.get("REMOE_TOKEN") or None,
        "tls": args.tls,
        "root_certificates": args.tls_ca,
    }


def _cmd_status(args: argparse.Namespace) -> int:
    from remoe.sdk import Client

    with Client(args.address, **_connection(args)) as client:
        reply = client.status(timeout=args.timeout)
    print(
        f"gateway {args.address}: model {reply.model}, {reply.active_requests} active (limit {reply.max_requests}), "
        f"{reply.served_requests} served, {reply.refused_requests} refused at the limit"
    )
    if reply.backbone_error:
        print(f"backbone: UNREACHABLE ({reply.backbone_error})")
        return 1
    b = reply.backbone
    print(
        f"backbone: {b.architecture} on {b.device}, {b.active_requests} active, {b.served_requests} served, "
        f"TTFT p50 {b.recent_ttft_ms_p50:.1f} ms, TPOT p50 {b.recent_tpot_ms_p50:.1f} ms, "
        f"fan-out p50 {b.recent_fanout_ms_p50:.2f} ms/layer"
    )
    q = b.batch
    if q.enabled:
        print(
            f"batch: {q.decoding} decoding, {q.prefilling} prefilling, {q.waiting} waiting (at most "
            f"{q.max_requests}), {q.steps} forwards, {q.recent_step_requests_mean:.1f} requests per decode step, "
            f"queue wait p50 {q.recent_queue_wait_ms_p50:.1f} ms, busy {q.busy_s:.1f} s"
        )
    else:
        print(f"batch: off ({q.disabled_reason or 'batching is off'})")
    if b.service_failovers:
        print(f"expert services: {b.service_failovers} batches failed over to another service")
    if b.functions:
        print(
            f"functions: {b.function_retries} retries, {b.function_fallbacks} fallbacks to an expert service, "
            f"{b.function_cold_fallbacks} batches computed there while their function started, "
            f"{b.function_reused_experts} plan experts sent to a running function"
        )
    for f in b.functions:
        where = f" @ {f.address}" if f.address else ""
        error = f", last error: {f.last_error}" if f.last_error else ""
        print(
            f"  function {f.function} replica {f.replica}: {f.state}{where}, {f.memory_mb} MiB, "
            f"{f.cold_starts} cold starts, {f.crashes} crashes, {f.calls} calls{error}"
        )
    for d in b.destinations:
        if not d.healthy:
            print(f"  {d.address}: DOWN ({d.error})")
            continue
        s = d.stats
        print(
            f"  {s.name or d.address} @ {d.address}: {s.batches} batches computed, hosts {len(s.hosted)} experts, "
            f"{len(s.resident)} loaded "
            f"({s.resident_bytes / 2**20:.1f} MiB), hits {s.hits}, loads {s.loads}, evictions {s.evictions}, "
            f"batch p50 {s.recent_batch_ms_p50:.2f} ms p99 {s.recent_batch_ms_p99:.2f} ms"
        )
    return 0


def _generate_remote(args: argparse.Namespace, token_ids: list[int] | None) -> int:
    from remoe.sdk import Client

    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        if args.json:
            result = client.generate(prompt=args.prompt, token_ids=token_ids, **options)
            usage = result.usage
            print(
                json.dumps(
                    {
                        "token_ids": result.token_ids,
                        "text": result.text,
                        "finish_reason": result.finish_reason,
                        "ttft_s": usage.ttft_s,
                        "tpot_s": usage.tpot_s,
                        "plan": json.loads(usage.plan) if usage.plan else None,
                    }
                )
            )
            return 0
        usage = None
        for chunk in client.stream(prompt=args.prompt, token_ids=token_ids, **options):
            print(chunk.text, end="", flush=True)
            usage = chunk.usage or usage
        print()
        if usage is not None:
            print(
                f"[{usage.completion_tokens} tokens, TTFT {usage.ttft_s * 1e3:.1f} ms, "
                f"TPOT {usage.tpot_s * 1e3:.1f} ms]",
                file=sys.stderr,
            )
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    token_ids = [int(t) for t in args.token_ids.split(",")] if args.token_ids else None
    if (args.prompt is None) == (token_ids is None):
        raise RemoeError("give a prompt or --token-ids (not both)")
    if args.model is None:
        return _generate_remote(args, token_ids)
    from remoe.model.engine import LocalEngine

    engine = LocalEngine(args.model, device=args.device, dtype=args.dtype, expert_budget_bytes=args.expert_budget)
    result = engine.generate(
        token_ids=token_ids,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "token_ids": result.token_ids,
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "ttft_s": result.ttft_s,
                    "tpot_s": result.tpot_s,
                    "expert_cache": engine.executor.stats.as_dict(),
                    "activations": result.activations.to_dict(),
                }
            )
        )
    else:
        print(result.text)
        print(
            f"[{len(result.token_ids)} tokens, finish={result.finish_reason}, TTFT {result.ttft_s * 1e3:.1f} ms, "
            f"TPOT {result.tpot_s * 1e3:.1f} ms]",
            file=sys.stderr,
        )
    return 0


def add_status(sub) -> None:
    p = sub.add_parser("status", help="show each service of a running cluster, its experts and counters")
    add_connection_flags(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.set_defaults(func=_cmd_status)


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text through a running cluster, or in-process with --model")
    p.add_argument("prompt", nargs="?", help="prompt text (needs tokenizer files in the model directory)")
    add_connection_flags(p)
    p.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds (default 300)")
    p.add_argument("--model", default=None, help="run in this process on this checkpoint or split directory")
    p.add_argument("--token-ids", help="comma-separated prompt token ids instead of text")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--device", default=None, help="backbone device (default: cuda if available, else cpu)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="compute dtype (default: the checkpoint's own)",
    )
    p.add_argument("--expert-budget", type=int, default=None, help="bytes of experts kept loaded (default: all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_generate)
