"""`remoe tiny-model`, `split`, `inspect`, `verify`, `train-tiny`: making, splitting and checking checkpoints."""

from __future__ import annotations

import argparse


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

    manifest = split_checkpoint(
        args.checkpoint, args.out, progress=not args.quiet, expert_dtype=args.expert_dtype, group_size=args.group_size
    )
    print(
        f"split {manifest.architecture} into {args.out}: backbone {manifest.backbone_bytes} bytes, "
        f"{len(manifest.layers)} MoE layers x {manifest.num_experts} experts ({manifest.experts_bytes} bytes)"
    )
    if manifest.expert_format is not None:
        print(f"routed experts stored {manifest.expert_format.label()}")
    elif args.expert_dtype != "same":
        print(f"routed experts already {manifest.dtype}: stored as they are (exact)")
    if manifest.experts_math is not None:
        family = manifest.experts_math.family
        print(f"experts math recorded ({family}): functions serve this split without importing transformers")
    else:
        print("experts outside the gated-SiLU family: functions import transformers to compute them with their class")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from remoe.checkpoint.weights import open_weights
    from remoe.model.kernel_report import kernel_report
    from remoe.model.split import describe
    from remoe.model.step_cache import batching_report
    from remoe.model.type_support import support_line

    weights = open_weights(args.model)
    print(describe(weights))
    print(support_line(weights.config.model_type))
    print(kernel_report(weights, args.kernel))
    print(batching_report(weights.config))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from remoe.model.type_support import support_line
    from remoe.model.verify import verify

    report = verify(
        args.checkpoint,
        remoe_model=args.split,
        prompt=args.prompt,
        max_new_tokens=args.tokens,
        expert_budget_bytes=args.expert_budget,
    )
    status = "OK" if report.ok else "MISMATCH"
    print(support_line(report.model_type))
    print(
        f"{status}: compared {len(report.reference_tokens)} greedy tokens (EOS ignored): "
        f"{'all equal' if report.tokens_equal else 'they DIFFER'}, "
        f"max prefill logit difference {report.max_logit_diff:.2e} (tolerance {report.tolerance:.0e})"
    )
    if not report.tokens_equal:
        print(f"  remoe:        {report.remoe_tokens}\n  transformers: {report.reference_tokens}")
    return 0 if report.ok else 1


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


def add_tiny_model(sub) -> None:
    from remoe.model.tiny import SUPPORTED_ARCHS

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


def add_split(sub) -> None:
    p = sub.add_parser("split", help="split a checkpoint into backbone, per-layer expert shards and manifest.json")
    p.add_argument("checkpoint", help="Hugging Face checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument(
        "--expert-dtype",
        default="same",
        choices=("same", "bf16", "int8", "int4"),
        help="how the routed experts are stored: same (as the checkpoint, exact; the default), bf16, or weight-only "
        "int8 (per output channel) / int4 (per group of input columns). Quantized experts are NOT exact: see "
        "docs/results/quantization.md for what they cost in quality. The backbone is never changed",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=128,
        help="int4: input columns per scale and minimum (even; a matrix with fewer columns uses all). Default 128",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_split)


def add_inspect(sub) -> None:
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


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check that Remoe reproduces transformers on a checkpoint, token for token")
    p.add_argument("checkpoint", help="original Hugging Face checkpoint directory (the reference)")
    p.add_argument("--split", default=None, help="a `remoe split` of it to check instead of the checkpoint itself")
    p.add_argument("--prompt", default="The quick brown fox", help="prompt text")
    p.add_argument(
        "--tokens",
        "--max-new-tokens",
        dest="tokens",
        type=int,
        default=32,
        help="greedy tokens to compare, all of them: EOS ends neither side (default 32)",
    )
    p.add_argument("--expert-budget", type=int, default=None, help="bytes of experts kept loaded (default: all)")
    p.set_defaults(func=_cmd_verify)


def add_train_tiny(sub) -> None:
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
