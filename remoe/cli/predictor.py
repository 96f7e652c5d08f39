"""`remoe corpus build`, `remoe predictor eval`: prompt corpora and the predictor's accuracy."""

from __future__ import annotations

import argparse
import json
import sys


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


def add_corpus(sub) -> None:
    p = sub.add_parser("corpus", help="prompt corpora: `remoe corpus build --out DIR`")
    corpus = p.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")
    p = corpus.add_parser("build", help="real prompts from Debian's text packages (fortunes, Python docs, licenses)")
    p.add_argument("--out", required=True, help="directory for corpus.jsonl, train.jsonl, test.jsonl")
    p.add_argument("--max-prompts", type=int, default=6000, help="keep this many after the shuffle (default 6000)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held out per domain (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_corpus_build)


def add_predictor(sub) -> None:
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
