"""`remoe profile`, `remoe plan`: this machine's speeds, and one request's plan."""

from __future__ import annotations

import argparse
import json

from remoe.cli.common import check_slos
from remoe.constants import DECODE_SAMPLE_S
from remoe.errors import RemoeError


def _cmd_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.decode_seconds is not None and not args.decode_seconds >= 0:
        raise RemoeError(f"--decode-seconds must be a number of seconds >= 0, got {args.decode_seconds}")
    from remoe.profiling.profile import plot_profile, profile_model

    report = profile_model(args.model, quick=args.quick, progress=not args.quiet, min_decode_s=args.decode_seconds)
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
        f"  backbone decode     {p.backbone_decode_s * 1e3:9.2f} ms per layer per token + "
        f"{p.backbone_decode_s_per_context_token * 1e6:.2f} us per token of context\n"
        f"  transfer            {p.bandwidth_bytes_s / 1e9:9.2f} GB/s\n"
        f"  function invoke     {p.invoke_s * 1e3:9.2f} ms warm, cold start {p.cold_start_s:.2f} s\n"
        f"  backbone dispatch   {p.dispatch_s * 1e3:9.2f} ms per function replica called, per layer\n"
        f"  function per expert {p.expert_call_s * 1e3:9.2f} ms fixed, per expert per batch\n"
        f"  T(y)                {th1:.3g} exp(-{th2:.3g} y) + {th3:.3g} s per token per expert\n"
        f"wrote {out} and {plot}"
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from remoe.scheduler.one_plan import PlanQuery, plan_one
    from remoe.scheduler.plan_output import describe
    from remoe.scheduler.problem import Prices, Profile
    from remoe.scheduler.profile_file import load_profile
    from remoe.scheduler.shape import SHAPES, shape_of_model

    if (args.model is None) == (args.shape is None):
        raise RemoeError("give --model DIR or --shape NAME (not both)")
    check_slos(args)
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
    frequency, source = None, "equal (no --predictor given: every expert equally likely)"
    if args.predictor:
        from remoe.predictor.remote import forecast_from

        frequency, source = forecast_from(args.predictor, args.prompt or "", ids, shape.layers, shape.experts)
    query = PlanQuery(
        shape,
        moe_layers,
        n_in,
        args.n_out,
        frequency,
        source,
        slo_ttft_s=args.slo_ttft / 1e3 if args.slo_ttft else float("inf"),
        slo_tpot_s=args.slo_tpot / 1e3 if args.slo_tpot else float("inf"),
        confidence=args.confidence,
        remote=args.remote,
    )
    prices = Prices(
        cpu_gb_s=args.cpu_price if args.cpu_price else Prices().cpu_gb_s,
        gpu_gb_s=args.gpu_price if args.gpu_price else Prices().gpu_gb_s,
    )
    result, request, document = plan_one(query, load_profile(args.profile) if args.profile else Profile(), prices)
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


def add_profile(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="measure this machine's speeds for a model (experts, functions, backbone) for the scheduler",
        description="Measures, through the real parts, what the scheduler's cost model needs: expert compute vs "
        "tokens and threads, transfer per byte, function cold start, warm invocation and remote time vs memory "
        "(fitted to T(y) = th1 exp(-th2 y) + th3), and the backbone's per-layer times through `remoe up`. "
        "Writes the JSON and a PNG plot of the fit next to it. Takes 3-5 minutes on a small model (--quick: 1-2).",
    )
    p.add_argument("--model", required=True, help="checkpoint or split directory")
    p.add_argument("--out", default="profile.json", help="JSON to write; the plot goes to the same name .png")
    p.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    p.add_argument(
        "--decode-seconds",
        type=float,
        help="decode seconds to time per end-to-end configuration, at least (default: "
        f"{DECODE_SAMPLE_S:g}, --quick: 0). On a shared machine a short sample is off by the machine's own noise: "
        "see bench/profile_sampling.py",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_profile)


def add_plan(sub) -> None:
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
