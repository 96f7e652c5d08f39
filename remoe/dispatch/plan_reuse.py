"""A request's plan against the functions already running: what they host is sent to them, not to new ones."""

from __future__ import annotations

from remoe.experts.cache import ExpertId
from remoe.platform.base import FunctionSpec, content_name


def reuse_running(
    functions: list[FunctionSpec], running: list[FunctionSpec]
) -> tuple[list[FunctionSpec], dict[str, list[ExpertId]]]:
    """Split a plan's functions into the experts running functions already host (function name -> experts) and
    what is left to new functions (each named by its remaining content, so the next request with the same
    remainder finds it warm). Earlier entries of `running` (warm ones) win when two host an expert."""
    host: dict[ExpertId, FunctionSpec] = {}
    for spec in running:
        for expert in spec.experts:
            host.setdefault(expert, spec)
    running_names = {spec.name for spec in running}
    new: list[FunctionSpec] = []
    reused: dict[str, list[ExpertId]] = {}
    for spec in functions:
        if spec.name in running_names:
            reused.setdefault(spec.name, []).extend(spec.experts)
            continue
        rest = tuple(e for e in spec.experts if e not in host)
        for expert in spec.experts:
            if expert in host:
                reused.setdefault(host[expert].name, []).append(expert)
        if rest == spec.experts:
            new.append(spec)
        elif rest:
            new.append(
                FunctionSpec(content_name(rest, spec.memory_mb), rest, spec.memory_mb, spec.replicas, spec.concurrency)
            )
    return new, reused
