"""The `remoe` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from remoe.constants import LEDGER_STREAM
from remoe.errors import RemoeError
from remoe.ports import DEFAULT_PORTS
from remoe.settings import BackboneSettings, GatewaySettings, default_of

GATEWAY_ADDRESS = f"localhost:{DEFAULT_PORTS['gateway']}"


def _gateway(field: str):
    return default_of(GatewaySettings, field)


def _backbone(field: str):
    return default_of(BackboneSettings, field)


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from remoe.model.tiny import TinySpec, make_tiny_model

    spec = TinySpec(
        arch=args.arch,
        layers=args.layers,
        experts=args.experts,
        top_k=args.top_k,
        hidden=args.hidden,
        vocab=args.vocab,
        seed=args.seed,
    )
    out = make_tiny_model(spec, args.out, layout=args.layout)
    print(f"wrote {spec.arch} tiny model ({args.layout} layout) to {out}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from remoe.model.split import split_checkpoint

    manifest = split_checkpoint(args.checkpoint, args.out, progress=not args.quiet)
    print(
        f"split {manifest.architecture} into {args.out}: backbone {manifest.backbone_bytes} bytes, "
        f"{len(manifest.layers)} MoE layers x {manifest.num_experts} experts ({manifest.experts_bytes} bytes)"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from remoe.checkpoint.weights import open_weights
    from remoe.model.kernel_report import kernel_report
    from remoe.model.split import describe
    from remoe.model.step_cache import batching_report

    weights = open_weights(args.model)
    print(describe(weights))
    print(kernel_report(weights, args.kernel))
    print(batching_report(weights.config))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from remoe.model.verify import verify

    report = verify(
        args.checkpoint,
        remoe_model=args.split,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        expert_budget_bytes=args.expert_budget,
    )
    status = "OK" if report.ok else "MISMATCH"
    print(
        f"{status}: {len(report.remoe_tokens)} greedy tokens {'equal' if report.tokens_equal else 'DIFFER'}, "
        f"max prefill logit difference {report.max_logit_diff:.2e} (tolerance {report.tolerance:.0e})"
    )
    if not report.tokens_equal:
        print(f"  remoe:        {report.remoe_tokens}\n  transformers: {report.reference_tokens}")
    return 0 if report.ok else 1


def _check_slos(args: argparse.Namespace) -> None:
    for flag in ("slo_ttft", "slo_tpot"):
        value = getattr(args, flag, None)
        if value is not None and not 0 < value < float("inf"):
            raise RemoeError(f"--{flag.replace('_', '-')} must be a positive number of ms, got {value}")


def _check_up_args(args: argparse.Namespace) -> None:
    """What `remoe up` can refuse before starting any process, with the flag's name."""
    from pathlib import Path

    from remoe.platform.plan import load_plan_file

    model = Path(args.model)
    if not model.is_dir():
        raise RemoeError(f"--model {model}: no such directory")
    if not (model / "config.json").is_file():
        raise RemoeError(f"--model {model}: no config.json (not a Hugging Face checkpoint or split directory)")
    if not 0.0 <= args.remote_ratio <= 1.0:
        raise RemoeError(f"--remote-ratio must be in [0, 1], got {args.remote_ratio}")
    if args.plan:
        load_plan_file(args.plan)  # ValueError naming the file and what is wrong
    _check_slos(args)
    for flag, port in (("--port", args.port), ("--http-port", args.http_port)):
        _check_port_free(flag, port)


def _check_port_free(flag: str, port: int) -> None:
    import socket

    if not 0 <= port <= 65535:
        raise RemoeError(f"{flag} must be in [0, 65535], got {port}")
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to a server
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise RemoeError(f"{flag} {port} is in use on 127.0.0.1: stop what holds it or pick another port") from None


def _cmd_up(args: argparse.Namespace) -> int:
    import signal
    import threading

    from remoe.cluster import LocalCluster

    _check_up_args(args)

    cluster = LocalCluster(
        args.model,
        port=args.port,
        http_port=args.http_port,
        expert_services=args.expert_services,
        run_dir=args.run_dir,
        expert_budget_bytes=args.expert_budget,
        backbone_device=args.device,
        remote_ratio=args.remote_ratio,
        plan_file=args.plan,
        function_ttl_s=args.function_ttl,
        function_memory_mb=args.function_memory_mb,
        scheduler=False if args.no_scheduler else None,
        profile=args.profile,
        slo_ttft_ms=args.slo_ttft or 0.0,
        slo_tpot_ms=args.slo_tpot or 0.0,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"remoe up: {args.model} (logs in {cluster.run_dir})", flush=True)
    try:
        cluster.start(report=lambda line: print(f"  {line}", flush=True))
        print(f"gateway listening on {cluster.address}; Ctrl-C stops every service", flush=True)
        base = cluster.http_url.removesuffix("/v1")
        print(f"OpenAI-compatible API on {cluster.http_url} (gateway metrics at {base}/metrics)", flush=True)
        metrics = ", ".join(f"{s.name} {s.metrics_url}" for s in cluster.services if s.metrics_url)
        if metrics:
            print(f"service metrics: {metrics}", flush=True)
        if cluster.redis_url and any(s.name == "scheduler" for s in cluster.services):
            print(f"metering ledger: `remoe cost --redis-url {cluster.redis_url}`", flush=True)
        while not stop.wait(1.0):
            dead = [s for s in cluster.services if s.process.poll() is not None]
            if dead:
                names = ", ".join(f"{s.name} (exit {s.process.returncode}, log {s.log_path})" for s in dead)
                print(f"remoe up: {names} stopped; shutting the cluster down", file=sys.stderr)
                return 1
    finally:
        print("stopping services ...", flush=True)
        cluster.stop()
        print("stopped", flush=True)
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    import redis

    from remoe.scheduler.ledger import Ledger, summarize

    ledger = Ledger(args.redis_url, stream=args.stream)
    try:
        records = ledger.read()
    except redis.RedisError as e:
        raise RemoeError(f"cannot read the ledger at {args.redis_url}: {e}") from None
    if args.last:
        records = records[-args.last :]
    summary = summarize(records)
    if args.json:
        print(json.dumps({"summary": summary, "records": [json.loads(r.to_json()) for r in records]}, indent=2))
        return 0
    if not records:
        print(f"the ledger {args.stream} at {args.redis_url} is empty: serve a request first")
        return 0
    n = summary["requests"]
    print(f"{n} request(s), {summary['tokens_out']} tokens generated")
    print(
        f"cost: ${summary['cost_total']:.4g} in all, ${summary['cost_per_request']:.4g} per request "
        f"(main ${summary['cost_main']:.4g}, functions ${summary['cost_remote']:.4g}; "
        f"{summary['function_seconds']:.2f} function-seconds)"
    )
    if summary["planned_requests"]:
        print(
            f"planned: {summary['planned_requests']} ({summary['infeasible_plans']} could not meet the SLO); "
            f"predicted ${summary['predicted_cost_per_request']:.4g} per request"
        )
        print(
            f"TTFT measured {summary['measured_ttft_s'] * 1e3:.1f} ms vs predicted "
            f"{summary['predicted_ttft_s'] * 1e3:.1f} ms (worst case); TPOT measured "
            f"{summary['measured_tpot_s'] * 1e3:.2f} ms vs predicted {summary['predicted_tpot_s'] * 1e3:.2f} ms"
        )
    return 0


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=GATEWAY_ADDRESS, help=f"gateway address (default {GATEWAY_ADDRESS})")
    p.add_argument("--token", default=None, help="bearer token of a gateway that asks for one (default: $REMOE_TOKEN)")
    p.add_argument("--tls", action="store_true", help="the gateway serves TLS (checked against the system's CAs)")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="the gateway serves TLS: trust this CA certificate")


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
            f"  {s.name or d.address} @ {d.address}: hosts {len(s.hosted)} experts, {len(s.resident)} loaded "
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


def _knative_functions(args: argparse.Namespace):
    from remoe.platform.plan import load_plan_file, remote_ratio_functions

    if args.plan:
        return load_plan_file(args.plan)
    if args.model is None:
        raise RemoeError("give --plan FILE, or --model DIR with --remote-ratio R")
    from remoe.checkpoint.weights import open_weights

    arch = open_weights(args.model).arch
    return remote_ratio_functions(arch.layer_indices, arch.num_experts, args.remote_ratio, args.function_memory_mb)


def _knative_settings(args: argparse.Namespace):
    from remoe.platform.knative import KnativeSettings, load_template

    try:
        template = load_template(args.template) if args.template else None
    except (OSError, ValueError) as e:
        raise RemoeError(str(e)) from None
    return KnativeSettings(
        namespace=args.namespace,
        image=args.image,
        model_pvc=args.pvc,
        model_subdir=args.model_subdir,
        idle_ttl_s=args.idle_ttl,
        template=template,
    )


def _cmd_knative_render(args: argparse.Namespace) -> int:
    import yaml

    from remoe.platform.knative import render_service

    settings = _knative_settings(args)
    docs = [render_service(spec, settings) for spec in _knative_functions(args)]
    text = yaml.safe_dump_all(docs, sort_keys=False)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {len(docs)} Knative Service(s) to {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _cmd_knative_apply(args: argparse.Namespace) -> int:
    from remoe.platform.knative import KnativeFunctionPlatform

    specs = _knative_functions(args)
    KnativeFunctionPlatform(_knative_settings(args)).deploy(specs)
    print(f"applied {len(specs)} Knative Service(s) in namespace {args.namespace}")
    return 0


def _cmd_corpus_build(args: argparse.Namespace) -> int:
    from collections import Counter
    from pathlib import Path

    from remoe.corpus.build import build_corpus, split, write_jsonl

    prompts = build_corpus(seed=args.seed, progress=not args.quiet)[: args.max_prompts]
    train, test = split(prompts, args.test_fraction)
    out = Path(args.out)
    write_jsonl(prompts, out / "corpus.jsonl")
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(test, out / "test.jsonl")
    domains = ", ".join(f"{k} {v}" for k, v in sorted(Counter(p.domain for p in prompts).items()))
    langs = ", ".join(f"{k} {v}" for k, v in sorted(Counter(p.lang for p in prompts).items()))
    print(f"{len(prompts)} prompts ({domains}; languages: {langs}) -> {out}: {len(train)} train, {len(test)} test")
    return 0


def _cmd_train_tiny(args: argparse.Namespace) -> int:
    from remoe.corpus.build import read_prompts
    from remoe.model.train import TrainSpec, train_tiny

    spec = TrainSpec(
        arch=args.arch,
        layers=args.layers,
        experts=args.experts,
        top_k=args.top_k,
        hidden=args.hidden,
        vocab=args.vocab,
        steps=args.steps,
        seed=args.seed,
        max_minutes=args.max_minutes,
    )
    summary = train_tiny(read_prompts(args.corpus), args.out, spec, progress=not args.quiet)
    print(
        f"trained {summary['parameters'] / 1e6:.1f}M parameters for {summary['steps']} steps in "
        f"{summary['minutes']:.1f} min: loss {summary['first_loss']:.2f} -> {summary['last_loss']:.2f}; "
        f"saved to {args.out}"
    )
    return 0


def _cmd_predictor_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from remoe.corpus.build import read_prompts
    from remoe.predictor.evaluate import evaluate, plot
    from remoe.predictor.predictor import SPSConfig

    train = read_prompts(args.train)[: args.max_train]
    test = read_prompts(args.test)[: args.max_test]
    config = SPSConfig(
        candidates=args.candidates,
        alpha=args.alpha,
        temperature=args.temperature,
        min_similarity=args.min_similarity,
    )
    report = evaluate(
        args.model, train, test, config, progress=not args.quiet, embedding_backend=args.embedding_backend
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.markdown())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(report.as_dict(), indent=2))
        (out / f"{args.name}.md").write_text(report.markdown())
        plot(report, str(out / f"{args.name}.png"))
        print(f"wrote {out / args.name}.json, .md and .png", file=sys.stderr)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from remoe.scheduler.profiling import plot_profile, profile_model

    report = profile_model(args.model, quick=args.quick, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.save(out)
    plot = out.with_suffix(".png")
    plot_profile(report, plot)
    p = report.profile
    th1, th2, th3 = p.remote_fit
    print(
        f"{report.model} on {report.machine}\n"
        f"  expert (local)      {p.local_expert_s_per_token * 1e6:9.1f} us per token\n"
        f"  backbone prefill    {p.backbone_prefill_layer_s * 1e3:9.2f} ms per layer + "
        f"{p.backbone_prefill_s_per_token * 1e6:.1f} us per token per layer\n"
        f"  backbone decode     {p.backbone_decode_s * 1e3:9.2f} ms per layer per token\n"
        f"  transfer            {p.bandwidth_bytes_s / 1e9:9.2f} GB/s\n"
        f"  function invoke     {p.invoke_s * 1e3:9.2f} ms warm, cold start {p.cold_start_s:.2f} s\n"
        f"  backbone dispatch   {p.dispatch_s * 1e3:9.2f} ms per function replica called, per layer\n"
        f"  function per expert {p.expert_call_s * 1e3:9.2f} ms fixed, per expert per batch\n"
        f"  T(y)                {th1:.3g} exp(-{th2:.3g} y) + {th3:.3g} s per token per expert\n"
        f"wrote {out} and {plot}"
    )
    return 0


def _forecast(args: argparse.Namespace, ids: list[int], shape) -> tuple[object, str]:
    """([L, E] frequency or None for equal, where it came from)."""
    if not args.predictor:
        return None, "equal (no --predictor given: every expert equally likely)"
    import grpc

    from remoe.proto import predictor_pb2, predictor_pb2_grpc
    from remoe.transport import tensor_codec
    from remoe.transport.channel import insecure_channel

    stub = predictor_pb2_grpc.PredictorServiceStub(insecure_channel(args.predictor))
    try:
        reply = stub.Predict(predictor_pb2.PredictRequest(prompt=args.prompt or "", token_ids=ids), timeout=10)
    except grpc.RpcError as e:
        raise RemoeError(f"predictor {args.predictor}: {e.code().name}: {e.details()}") from None
    frequency = tensor_codec.decode(reply.frequency, "frequency", dtype="float32", rank=2).numpy()
    if frequency.shape != (shape.layers, shape.experts):
        raise RemoeError(f"the predictor forecasts {frequency.shape}, the model is {shape.layers}x{shape.experts}")
    return frequency.astype("float64"), f"{reply.source} (predictor {args.predictor})"


def _cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from remoe.scheduler.plan_output import describe, plan_to_json
    from remoe.scheduler.planner import plan
    from remoe.scheduler.problem import Limits, Prices, Profile
    from remoe.scheduler.profiling import load_profile
    from remoe.scheduler.shape import SHAPES, shape_of_model

    if (args.model is None) == (args.shape is None):
        raise RemoeError("give --model DIR or --shape NAME (not both)")
    _check_slos(args)
    if args.model is not None:
        from remoe.checkpoint.weights import open_weights

        shape, moe_layers = shape_of_model(args.model), open_weights(args.model).arch.layer_indices
    else:
        shape = SHAPES[args.shape]()
        moe_layers = list(range(shape.layers))
    ids: list[int] = []
    if args.prompt is not None:
        if args.model is None:
            raise RemoeError("--prompt needs --model (its tokenizer); with --shape give --n-in")
        from remoe.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(Path(args.model))
        if tokenizer is None:
            raise RemoeError(f"{args.model} has no tokenizer: give --n-in")
        ids = tokenizer.encode(args.prompt)
    n_in = len(ids) if ids else args.n_in
    if not n_in or n_in < 1:
        raise RemoeError("give --prompt TEXT or --n-in N (prompt tokens, >= 1)")
    frequency, source = _forecast(args, ids, shape)
    profile = load_profile(args.profile) if args.profile else Profile()
    prices = Prices(
        cpu_gb_s=args.cpu_price if args.cpu_price else Prices().cpu_gb_s,
        gpu_gb_s=args.gpu_price if args.gpu_price else Prices().gpu_gb_s,
    )
    inf = float("inf")
    request = shape.request(
        frequency,
        n_in,
        args.n_out,
        slo_ttft_s=args.slo_ttft / 1e3 if args.slo_ttft else inf,
        slo_tpot_s=args.slo_tpot / 1e3 if args.slo_tpot else inf,
        confidence=args.confidence,
    )
    if args.remote is not None and not 0 <= args.remote <= shape.experts:
        raise RemoeError(f"--remote must be in [0, {shape.experts}]")
    fixed = args.remote is not None
    result = plan(
        request, profile, prices, Limits(), counts=[args.remote] if fixed else None, per_layer_moves=not fixed
    )
    document = plan_to_json(result, request, moe_layers)
    document["plan"]["forecast"] = source
    document["plan"]["model"] = shape.name
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(
            f"{shape.name}: {shape.layers} MoE layers x {shape.experts} experts, top-{shape.top_k}; forecast: {source}"
        )
        if not args.profile:
            print("profile: built-in placeholders (measure this machine with `remoe profile`)")
        print(describe(result, request, moe_layers))
        if args.out:
            print(f"wrote {args.out} (run it with `remoe up --model DIR --plan {args.out}`)")
    return 0 if result.feasible else 3


def build_parser() -> argparse.ArgumentParser:
    from remoe.model.tiny import SUPPORTED_ARCHS

    parser = argparse.ArgumentParser(
        prog="remoe",
        description="Remoe: serve Mixture-of-Experts models with a GPU backbone, CPU experts and serverless functions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tiny-model", help="write a seeded random-init MoE checkpoint with a real tokenizer")
    p.add_argument("--arch", required=True, choices=SUPPORTED_ARCHS, help="transformers model_type")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument("--experts", type=int, default=8, help="routed experts per MoE layer (default 8)")
    p.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size, a multiple of 16 (default 64)")
    p.add_argument("--vocab", type=int, default=512, help="BPE vocabulary size (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    p.add_argument(
        "--layout",
        choices=["per-expert", "fused"],
        default="per-expert",
        help="on-disk expert layout: per-expert keys as hub checkpoints use (default) or fused [E, ...] tensors",
    )
    p.set_defaults(func=_cmd_tiny_model)

    p = sub.add_parser("split", help="split a checkpoint into backbone, per-layer expert shards and manifest.json")
    p.add_argument("checkpoint", help="Hugging Face checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser(
        "inspect", help="describe a checkpoint or split directory: layers, experts, sizes, each layer's expert kernel"
    )
    p.add_argument("model", help="checkpoint or split directory")
    p.add_argument(
        "--kernel",
        default="auto",
        choices=("auto", "native", "aten", "onednn", "class"),
        help="expert kernel to ask for (default auto: native where it builds and covers the layer)",
    )
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("verify", help="check that Remoe reproduces transformers on a checkpoint, token for token")
    p.add_argument("checkpoint", help="original Hugging Face checkpoint directory (the reference)")
    p.add_argument("--split", default=None, help="a `remoe split` of it to check instead of the checkpoint itself")
    p.add_argument("--prompt", default="The quick brown fox", help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens to compare (default 32)")
    p.add_argument("--expert-budget", type=int, default=None, help="bytes of experts kept loaded (default: all)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("up", help="run the whole cluster (gateway, backbone, expert services) as local processes")
    p.add_argument("--model", required=True, help="checkpoint or split directory")
    p.add_argument("--port", type=int, default=_gateway("port"), help="gateway port (default %(default)s)")
    p.add_argument(
        "--http-port",
        type=int,
        default=_gateway("http_port"),
        help="the gateway's OpenAI-compatible HTTP API and /metrics (default %(default)s; 0: any free port)",
    )
    p.add_argument(
        "--expert-services", type=int, default=2, help="expert services; each layer's experts are split between them"
    )
    p.add_argument("--expert-budget", type=int, default=None, help="bytes of experts each service keeps loaded")
    p.add_argument("--device", default=None, help="backbone device (default: cuda if available, else cpu)")
    p.add_argument("--run-dir", default=None, help="where logs and port files go (default: a new temp dir)")
    p.add_argument(
        "--remote-ratio",
        type=float,
        default=0.0,
        help="share of each layer's experts served by serverless functions (one per layer), e.g. 0.5",
    )
    p.add_argument("--plan", default=None, help="plan file (JSON) naming the functions, instead of --remote-ratio")
    p.add_argument(
        "--function-ttl",
        type=float,
        default=_backbone("function_ttl_s"),
        help="idle seconds before a function scales to zero",
    )
    p.add_argument(
        "--function-memory-mb",
        type=int,
        default=_backbone("function_memory_mb"),
        help="memory size of each function instance",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="`remoe profile` JSON: the scheduler then plans every request (without one, every expert stays on the "
        "expert services)",
    )
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in ms for every request's plan")
    p.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in ms for every request's plan")
    p.add_argument("--no-scheduler", action="store_true", help="no per-request plans even with --profile")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser(
        "cost",
        help="summarise the metering ledger: cost per request by part, predicted vs measured",
        description="Reads the metering ledger (a Redis stream the gateway appends one record to per request) and "
        "prints totals: cost by part (main model, functions), predicted vs measured TTFT/TPOT and cost.",
    )
    p.add_argument("--redis-url", required=True, help="the cluster's Redis (printed by `remoe up`)")
    p.add_argument("--stream", default=LEDGER_STREAM, help=f"ledger stream name (default {LEDGER_STREAM})")
    p.add_argument("--last", type=int, default=None, help="only the last N records")
    p.add_argument("--json", action="store_true", help="print the summary (and records) as JSON")
    p.set_defaults(func=_cmd_cost)

    for verb, func, text in (
        ("knative-render", _cmd_knative_render, "print the Knative Services (YAML) of a plan's functions"),
        ("knative-apply", _cmd_knative_apply, "create/update/delete a plan's Knative Services in a cluster"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("--plan", default=None, help="plan file (JSON) naming the functions")
        p.add_argument("--model", default=None, help="with --remote-ratio: make one function per MoE layer")
        p.add_argument("--remote-ratio", type=float, default=0.5, help="share of each layer's experts (default 0.5)")
        p.add_argument(
            "--function-memory-mb",
            type=int,
            default=_backbone("function_memory_mb"),
            help="memory size per function (MiB)",
        )
        p.add_argument(
            "--namespace", default=_backbone("knative_namespace"), help="Kubernetes namespace (default %(default)s)"
        )
        p.add_argument(
            "--image", default=_backbone("knative_image"), help="function container image (default %(default)s)"
        )
        p.add_argument(
            "--template", default=None, help="Knative Service YAML to start from (k8s/base/function-template.yaml)"
        )
        p.add_argument(
            "--pvc",
            default=_backbone("knative_model_pvc"),
            help="PersistentVolumeClaim holding the model (default %(default)s)",
        )
        p.add_argument(
            "--model-subdir",
            default=_backbone("knative_model_subdir"),
            help="model directory inside the volume (default %(default)s)",
        )
        p.add_argument(
            "--idle-ttl",
            type=int,
            default=int(_backbone("function_ttl_s")),
            help="seconds idle before scaling to zero (default %(default)s)",
        )
        if verb == "knative-render":
            p.add_argument("--out", default=None, help="write the YAML here instead of stdout")
        p.set_defaults(func=func)

    p = sub.add_parser("corpus", help="prompt corpora: `remoe corpus build --out DIR`")
    corpus = p.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")
    p = corpus.add_parser("build", help="real prompts from Debian's text packages (fortunes, Python docs, licenses)")
    p.add_argument("--out", required=True, help="directory for corpus.jsonl, train.jsonl, test.jsonl")
    p.add_argument("--max-prompts", type=int, default=6000, help="keep this many after the shuffle (default 6000)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held out per domain (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_corpus_build)

    p = sub.add_parser("predictor", help="the expert-activation predictor: `remoe predictor eval ...`")
    predictor = p.add_subparsers(dest="predictor_command", required=True, metavar="COMMAND")
    p = predictor.add_parser("eval", help="forecast accuracy of SPS and the baselines on held-out prompts")
    p.add_argument("--model", required=True, help="checkpoint or split directory")
    p.add_argument("--train", required=True, help="prompts to ingest (JSON Lines with 'prompt', or text lines)")
    p.add_argument("--test", required=True, help="prompts to forecast")
    p.add_argument("--max-train", type=int, default=5000, help="use at most this many train prompts (default 5000)")
    p.add_argument("--max-test", type=int, default=500, help="use at most this many test prompts (default 500)")
    p.add_argument("--candidates", type=int, default=50, help="M: nearest prompts fetched by embedding")
    p.add_argument("--alpha", type=int, default=15, help="kept after the soft cosine re-rank")
    p.add_argument("--temperature", type=float, default=0.05, help="softmax(SCS / temperature) (default 0.05)")
    p.add_argument("--min-similarity", type=float, default=0.3, help="weaker best match: use the prior (0.3)")
    p.add_argument("--embedding-backend", default=None, help="onnx (default), onnx-int8 or torch: how MiniLM runs")
    p.add_argument("--out", default=None, help="write NAME.json, NAME.md and NAME.png here")
    p.add_argument("--name", default="predictor", help="file name stem under --out (default predictor)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_predictor_eval)

    p = sub.add_parser("train-tiny", help="train a small MoE on a prompt corpus on the CPU (a normal HF checkpoint)")
    p.add_argument("--corpus", required=True, help="JSON Lines with a 'prompt' field, or plain text lines")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--arch", choices=["qwen3_moe", "mixtral"], default="qwen3_moe")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary trained on the corpus")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=20.0, help="stop (and save) after this long")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_tiny)

    p = sub.add_parser(
        "profile",
        help="measure this machine's speeds for a model (experts, functions, backbone) for the scheduler",
        description="Measures, through the real parts, what the scheduler's cost model needs: expert compute vs "
        "tokens and threads, transfer per byte, function cold start, warm invocation and remote time vs memory "
        "(fitted to T(y) = th1 exp(-th2 y) + th3), and the backbone's per-layer times through `remoe up`. "
        "Writes the JSON and a PNG plot of the fit next to it. Takes 1-3 minutes on a small model.",
    )
    p.add_argument("--model", required=True, help="checkpoint or split directory")
    p.add_argument("--out", default="profile.json", help="JSON to write; the plot goes to the same name .png")
    p.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser(
        "plan",
        help="the cheapest placement that meets an SLO for one prompt: remote experts, memory, replicas, cost",
        description="Runs the scheduler (MMP, remote selection by utility, Lagrangian memory sizing, LPT replicas) "
        "for one request and prints the plan; --out writes it as a plan file for `remoe up --plan`. "
        "Exit status 3 when no plan meets the SLO (the fastest one is shown).",
    )
    p.add_argument("--model", default=None, help="checkpoint or split directory")
    p.add_argument("--shape", default=None, choices=["deepseek-v2-lite", "gpt2-moe"], help="a paper model's shape")
    p.add_argument("--prompt", default=None, help="the prompt (tokenized with the model's tokenizer)")
    p.add_argument("--n-in", type=int, default=None, help="prompt tokens, instead of --prompt")
    p.add_argument("--n-out", type=int, default=200, help="tokens to generate (default 200, the paper's)")
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in ms (default: none)")
    p.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in ms (default: none)")
    p.add_argument("--confidence", type=float, default=0.95, help="worst-case token counts hold with this (0.95)")
    p.add_argument("--profile", default=None, help="a `remoe profile` JSON (default: built-in placeholders)")
    p.add_argument(
        "--remote",
        type=int,
        default=None,
        help="send exactly this many experts of every layer out (the lowest-utility ones; memory and replicas are "
        "still planned) instead of letting the planner choose",
    )
    p.add_argument("--predictor", default=None, help="predictor service address for the forecast (default: equal)")
    p.add_argument("--cpu-price", type=float, default=None, help="$ per GB-s of CPU memory (default: AWS Lambda)")
    p.add_argument("--gpu-price", type=float, default=None, help="$ per GB-s of GPU memory (default: Cloud Run L4)")
    p.add_argument("--out", default=None, help="write the plan file (JSON) here")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("status", help="show each service of a running cluster, its experts and counters")
    _add_connection_flags(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("generate", help="generate text through a running cluster, or in-process with --model")
    p.add_argument("prompt", nargs="?", help="prompt text (needs tokenizer files in the model directory)")
    _add_connection_flags(p)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (RemoeError, ValueError) as e:
        print(f"remoe {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
