"""The `remoe` command: one module per command group (remoe/cli/*.py), each a thin layer over library calls."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from remoe.cli import client, cost, knative, models, predictor, scheduler, up
from remoe.errors import RemoeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remoe",
        description="Remoe: serve Mixture-of-Experts models with a GPU backbone, CPU experts and serverless functions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        models.add_tiny_model,
        models.add_split,
        models.add_inspect,
        models.add_verify,
        up.add_up,
        cost.add_cost,
        knative.add_knative,
        predictor.add_corpus,
        predictor.add_predictor,
        models.add_train_tiny,
        scheduler.add_profile,
        scheduler.add_plan,
        client.add_status,
        client.add_generate,
    ):
        add(sub)
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
