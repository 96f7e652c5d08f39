"""Functions that run as processes on the backbone's host (the local platform of `remoe up` and `remoe profile`)
rather than each on a CPU share of its own: the two things the paper's model then gets wrong.

- Speed: a function with y GB gets floor(y) threads (at least 1, at most the host's cores), not a share that
  grows with y. T(y) is fitted through whole-GB samples, so between them the fit promises a speed no thread
  delivers (1.2 GB computed at the 1 GB rate, not the fit's 40% faster one): T is read at the whole GB.
- Sharing: a layer's expert batches (the main model's own experts and every replica it called) compute at once
  on the same C cores. The layer's expert phase lasts at least their core-seconds / C, and each replica's
  handler is stretched while more threads are busy than there are cores, up to the phase (on the 2-core host,
  DeepSeek-V2-Lite's shape, the handlers billed about twice what the unshared model priced).

`cores` = Profile.function_host_cores; 0: each function has its own CPU (a serverless platform), every function
here is the identity. Values may be floats or numpy arrays (the planner's memory grid).
"""

from __future__ import annotations

import numpy as np


def threads(memory_gb, cores: int):
    """Threads a function with `memory_gb` computes with on the host (1 GiB buys one)."""
    return np.clip(np.floor(np.asarray(memory_gb, dtype=np.float64) + 1e-9), 1.0, max(cores, 1))


def speed_memory_gb(memory_gb, cores: int):
    """The memory T(y) is read at: the whole GB its threads come from on the host, y itself on a platform."""
    return threads(memory_gb, cores) if cores > 0 else memory_gb


def expert_phase_s(longest_s, core_s, cores: int):
    """A layer's expert phase: its longest batch, or on shared cores at least all its batches' core-seconds
    spread over them."""
    return np.maximum(longest_s, core_s / cores) if cores > 0 else longest_s


def replicas_billed_s(alone_s, replicas, threads, local_busy, phase_s, cores: int):
    """A layer's replicas' billed prefill seconds, summed, from their time alone (`alone_s`, summed): on the
    host's cores each, at the layer's mean work, is stretched by the threads busy beside it (its replicas' and
    the main model's own experts' when `local_busy`), up to the phase. The mean keeps the planner's vectorised
    terms exact (they know a partition only by its sums)."""
    if cores <= 0:
        return alone_s
    each = alone_s / np.maximum(replicas, 1)  # no replicas: alone_s is 0
    return replicas * stretched_s(each, replicas * threads + local_busy, phase_s, cores)


def stretched_s(busy_s, busy_threads, phase_s, cores: int):
    """A replica's handler time when `busy_threads` threads compute at once on the cores (each gets its share),
    never past the layer's expert phase; its time alone (`busy_s`) off shared cores."""
    if cores <= 0:
        return busy_s
    return np.minimum(busy_s * np.maximum(1.0, busy_threads / cores), np.maximum(phase_s, busy_s))
