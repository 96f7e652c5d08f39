"""Published price sets, each with its source and the date it was read, to price the same measured run several
ways. The scheduler plans with one `Prices` (c_c, c_g per GB-second); a whole-GPU set bills the backbone's
instance per second whatever memory it holds, as GPU platforms do.

All prices in US dollars, on-demand, first tier, no free tier. Sources as read on the date given; they change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from remoe.scheduler.problem import LAMBDA_GB_S, Prices

HOUR = 3600.0
# AWS Lambda x86, us-east-1: $0.0000166667 per GB-s of configured memory, $0.20 per million requests
# (docs.aws.amazon.com/whitepapers/latest/how-aws-pricing-works/lambda.html; aws.amazon.com/lambda/pricing).
LAMBDA_SOURCE = "AWS Lambda x86 us-east-1, aws.amazon.com/lambda/pricing"
LAMBDA_REQUEST = 0.20 / 1e6
# Google Cloud Run, NVIDIA L4 (24 GB), instance-based billing, Tier 1: about $0.67 per GPU-hour; an L4
# instance needs at least 4 vCPU ($0.000018 per vCPU-s) and 16 GiB ($0.000002 per GiB-s), and the GPU is billed
# for the instance's whole lifetime (cloud.google.com/run/pricing; cloud.google.com/run/docs/configuring/
# services/gpu).
L4_GPU_HOUR = 0.67
L4_INSTANCE_S = L4_GPU_HOUR / HOUR + 4 * 0.000018 + 16 * 0.000002
L4_GB = 24
# H100 80GB on demand, one GPU: Lambda (the cloud) $2.49 per GPU-hour; AWS p5.48xlarge $98.32 per hour for 8
# (computespec.pages.dev/learn/pricing/cloud-gpu-pricing-explained, early 2026).
H100_LAMBDA_HOUR = 2.49
H100_AWS_HOUR = 98.32 / 8
H100_GB = 80
READ_ON = "2026-12-04"


@dataclass(frozen=True, slots=True)
class PriceSet:
    name: str
    prices: Prices  # c_c, and c_g per GB-second of GPU memory held
    source: str
    whole_gpu_s: float = 0.0  # > 0: the backbone's instance per second instead of c_g x GB
    gpu_memory_gb: float = 0.0  # one card's memory: a whole-GPU bill takes as many cards as the memory needs
    request_fee: float = 0.0  # $ per function invocation, where functions bill per request
    date: str = READ_ON

    def gpus(self, gpu_gb: float) -> int:
        """Cards a whole-GPU bill counts for this much GPU memory (at least one)."""
        return max(1, math.ceil(gpu_gb / self.gpu_memory_gb - 1e-9)) if self.gpu_memory_gb > 0 else 1

    @property
    def ratio(self) -> float:
        """c_g / c_c (the paper assumes >= 3)."""
        return self.prices.gpu_gb_s / self.prices.cpu_gb_s


def _per_gb(hour: float, gb: float) -> float:
    return hour / HOUR / gb


PRICE_SETS: tuple[PriceSet, ...] = (
    PriceSet(
        "Lambda + Cloud Run L4, per GB",
        Prices(LAMBDA_GB_S, _per_gb(L4_GPU_HOUR, L4_GB)),
        f"{LAMBDA_SOURCE}; Cloud Run L4 GPU ${L4_GPU_HOUR}/h over its {L4_GB} GB (the GPU price alone)",
        request_fee=LAMBDA_REQUEST,
    ),
    PriceSet(
        "Lambda + Cloud Run L4, whole instance",
        Prices(LAMBDA_GB_S, _per_gb(L4_INSTANCE_S * HOUR, L4_GB)),
        f"{LAMBDA_SOURCE}; Cloud Run L4 instance: GPU ${L4_GPU_HOUR}/h + the mandatory 4 vCPU and 16 GiB, "
        f"${L4_INSTANCE_S * HOUR:.3f}/h, billed whole",
        whole_gpu_s=L4_INSTANCE_S,
        gpu_memory_gb=L4_GB,
        request_fee=LAMBDA_REQUEST,
    ),
    PriceSet(
        "Lambda + H100 on demand (Lambda cloud), per GB",
        Prices(LAMBDA_GB_S, _per_gb(H100_LAMBDA_HOUR, H100_GB)),
        f"{LAMBDA_SOURCE}; H100 80GB ${H100_LAMBDA_HOUR}/GPU-h (Lambda cloud) over its {H100_GB} GB",
        request_fee=LAMBDA_REQUEST,
    ),
    PriceSet(
        "Lambda + H100 on demand (AWS p5), whole GPU",
        Prices(LAMBDA_GB_S, _per_gb(H100_AWS_HOUR, H100_GB)),
        f"{LAMBDA_SOURCE}; AWS p5.48xlarge ${H100_AWS_HOUR * 8:.2f}/h for 8 H100s, ${H100_AWS_HOUR:.2f}/GPU-h, "
        "billed whole",
        whole_gpu_s=H100_AWS_HOUR / HOUR,
        gpu_memory_gb=H100_GB,
        request_fee=LAMBDA_REQUEST,
    ),
    PriceSet(
        "the paper's ratio (c_g = 3 c_c)",
        Prices(LAMBDA_GB_S, 3 * LAMBDA_GB_S),
        f"{LAMBDA_SOURCE}; c_g/c_c = 3, the paper's stated assumption",
    ),
)
