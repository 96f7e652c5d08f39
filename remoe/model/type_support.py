"""What the support survey found for a model type (remoe/model/data/model_type_support.json, written by
`python -m remoe.survey.type_survey --all`): the line `remoe inspect` and `remoe verify` print."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

SUPPORT_FILE = "model_type_support.json"


@cache
def survey_results() -> dict:
    """{"transformers": version, "results": {model_type: TypeResult as a dict}} ({} when there is none)."""
    try:
        return json.loads(resources.files("remoe.model").joinpath("data", SUPPORT_FILE).read_text())
    except FileNotFoundError:
        return {}


def support_line(model_type: str) -> str:
    survey = survey_results()
    result = survey.get("results", {}).get(model_type)
    where = f"the support survey (transformers {survey.get('transformers', '?')}, seeded tiny model)"
    if result is None:
        return f"support: {model_type} is not in {where}; `remoe verify` checks this checkpoint itself"
    if result["status"] == "exact":
        return (
            f"support: {model_type} is token-exact in {where}: {result['tokens']} greedy tokens and prefill logits "
            f"through {', '.join(result['checks'])}"
        )
    if result["status"] == "transformers":
        return f"support: transformers itself could not run the tiny {model_type} on CPU in {where}: {result['reason']}"
    return f"support: {model_type} is NOT supported in {where}: {result['reason']}"


README_BEGIN = "<!-- model types: written by `python -m remoe.survey.type_survey --all` -->"
README_END = "<!-- model types: end -->"


def readme_summary(survey: dict) -> str:
    """The README's paragraph of supported model types, from the survey's results (between its markers)."""
    import textwrap

    results = survey.get("results", {})
    by_status: dict[str, list[str]] = {}
    for model_type, result in sorted(results.items()):
        by_status.setdefault(result["status"], []).append(model_type)
    exact = by_status.get("exact", [])
    text_types = [t for t, r in results.items() if r["status"] != "composite"]
    served_up = [t for t in exact if "remoe up" in results[t]["checks"]]
    unbatched = [t for t in exact if results[t].get("unbatched")]
    parts = [
        f"**{len(exact)} of the {len(text_types)} text model types of transformers {survey.get('transformers', '?')}"
        f" are token-exact** ({len(by_status.get('composite', []))} multimodal types are checked through their "
        f"text models): {', '.join(exact)}."
    ]
    others = {s: ts for s, ts in by_status.items() if s not in ("exact", "composite")}
    for status, types in others.items():
        parts.append(f"Not exact ({status}, see the table for each reason): {', '.join(types)}.")
    parts.append(
        f"Through `remoe up` (two expert services and functions): {', '.join(served_up)}. "
        f"Served one request at a time, since their caches hold linear-attention or recurrent state, sparse-attention "
        f"indexer keys or compressed layers, or are a class of the model's own ({len(unbatched)}): "
        f"{', '.join(unbatched)}; the others share decode steps."
    )
    return "\n".join(textwrap.fill(p, width=110, break_on_hyphens=False) for p in parts)


def replace_readme_block(readme: str, summary: str) -> str:
    """`readme` with the text between its model-type markers replaced by `summary` (unchanged without markers)."""
    start, end = readme.find(README_BEGIN), readme.find(README_END)
    if start < 0 or end < start:
        return readme
    return readme[: start + len(README_BEGIN)] + "\n" + summary + "\n" + readme[end:]
