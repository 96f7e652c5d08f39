"""`remoe knative-render`, `knative-apply`: a plan's functions as Knative Services."""

from __future__ import annotations

import argparse
import sys

from remoe.cli.common import backbone_default
from remoe.errors import RemoeError


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


def add_knative(sub) -> None:
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
            default=backbone_default("function_memory_mb"),
            help="memory size per function (MiB)",
        )
        p.add_argument(
            "--namespace",
            default=backbone_default("knative_namespace"),
            help="Kubernetes namespace (default %(default)s)",
        )
        p.add_argument(
            "--image", default=backbone_default("knative_image"), help="function container image (default %(default)s)"
        )
        p.add_argument(
            "--template", default=None, help="Knative Service YAML to start from (k8s/base/function-template.yaml)"
        )
        p.add_argument(
            "--pvc",
            default=backbone_default("knative_model_pvc"),
            help="PersistentVolumeClaim holding the model (default %(default)s)",
        )
        p.add_argument(
            "--model-subdir",
            default=backbone_default("knative_model_subdir"),
            help="model directory inside the volume (default %(default)s)",
        )
        p.add_argument(
            "--idle-ttl",
            type=int,
            default=int(backbone_default("function_ttl_s")),
            help="seconds idle before scaling to zero (default %(default)s)",
        )
        if verb == "knative-render":
            p.add_argument("--out", default=None, help="write the YAML here instead of stdout")
        p.set_defaults(func=func)
