"""What the support survey found for a model type (remoe/model/data/model_type_support.json, written by
`python -m remoe.model.type_survey --all`): the line `remoe inspect` and `remoe verify` print."""

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
