"""The part of this process's environment a locally started function process gets."""

from __future__ import annotations

import os

# What a function process inherits from the backbone's environment: enough to run Python offline and trace; no
# secrets (a gateway token, Redis URLs) and no settings of other services. REMOE_KERNEL_CACHE and CC: where the
# native expert kernel is built and with what, so the host's functions share one build.
_INHERITED = {
    "PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "HOME",
    "TMPDIR",
    "LANG",
    "TZ",
    "HF_HOME",
    "REMOE_KERNEL_CACHE",
    "CC",
}
_INHERITED_PREFIXES = ("LC_", "OTEL_", "HF_HUB_", "TRANSFORMERS_", "OMP_", "MKL_")


def function_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith(_INHERITED_PREFIXES)}
