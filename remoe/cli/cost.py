"""`remoe cost`: the metering ledger summarised."""

from __future__ import annotations

import argparse
import json

from remoe.constants import LEDGER_STREAM
from remoe.errors import RemoeError


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
        f"{summary['function_seconds']:.2f} billed function-seconds, "
        f"{summary['function_round_trip_seconds']:.2f} s of round trips)"
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


def add_cost(sub) -> None:
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
