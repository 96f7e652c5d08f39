"""The function platform the backbone's settings ask for."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from remoe.functions.experts_record import write_record
from remoe.platform.base import FunctionPlatform
from remoe.platform.local import LocalFunctionPlatform
from remoe.settings import BackboneSettings

if TYPE_CHECKING:
    from remoe.checkpoint.weights import ModelWeights

log = logging.getLogger(__name__)


def platform_from_settings(s: BackboneSettings, weights: ModelWeights | None = None) -> FunctionPlatform:
    """Local processes beside the backbone, or Knative Services in the backbone's cluster. With the backbone's
    opened `weights`, local functions get an experts record and open their experts without transformers."""
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
    run_dir.mkdir(parents=True, exist_ok=True)
    record = None
    if weights is not None:
        try:
            record, why = write_record(weights, run_dir)
        except Exception as e:  # the record only saves imports: without it functions open their weights in full
            record, why = None, f"the experts record could not be written: {e}"
        log.info("functions open their experts %s (%s)", "lean" if record else "with transformers", why)
    return LocalFunctionPlatform(
        str(s.model),
        run_dir,
        idle_ttl_s=s.function_ttl_s,
        memory_budget_mb=s.function_memory_budget_mb,
        max_starting=s.function_max_starting,
        runtime=s.function_runtime,
        experts_record=record,
    )
