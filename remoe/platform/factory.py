"""The function platform the backbone's settings ask for."""

from __future__ import annotations

import tempfile
from pathlib import Path

from remoe.platform.base import FunctionPlatform
from remoe.platform.local import LocalFunctionPlatform
from remoe.settings import BackboneSettings


def platform_from_settings(s: BackboneSettings) -> FunctionPlatform:
    """Local processes beside the backbone, or Knative Services in the backbone's cluster."""
    if s.function_platform == "knative":
        from remoe.platform.knative import KnativeFunctionPlatform, KnativeSettings, load_template

        knative = KnativeSettings(
            namespace=s.knative_namespace,
            image=s.knative_image,
            model_pvc=s.knative_model_pvc,
            model_subdir=s.knative_model_subdir,
            idle_ttl_s=round(s.function_ttl_s),
            template=load_template(s.knative_template) if s.knative_template else None,
        )
        return KnativeFunctionPlatform(knative)
    run_dir = Path(s.run_dir or tempfile.mkdtemp(prefix="remoe-functions-"))
    return LocalFunctionPlatform(
        str(s.model),
        run_dir,
        idle_ttl_s=s.function_ttl_s,
        memory_budget_mb=s.function_memory_budget_mb,
        max_starting=s.function_max_starting,
        runtime=s.function_runtime,
    )
