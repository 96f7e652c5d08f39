"""Admission control: at most `limit` requests at once; beyond it a request is refused at once with a retry hint
rather than queued without bound."""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager

import grpc
import numpy as np

from remoe.gateway.refused import Refused


class Admission:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the request limit must be >= 1, got {limit}")
        self.limit = limit
        self.active = 0  # admitted requests, from arrival to their last chunk
        self.served = 0  # served to their end
        self.refused = 0
        self._durations_s: deque[float] = deque(maxlen=256)  # of recent requests, for the retry hint
        self._lock = threading.Lock()

    @contextmanager
    def slot(self):
        """Hold one of the `limit` slots for the body; raises Refused (RESOURCE_EXHAUSTED) when none is free. How
        long the body took feeds the retry hint."""
        with self._lock:
            if self.active >= self.limit:
                self.refused += 1
                retry_ms = self._retry_after_ms()
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the gateway is serving its limit of {self.limit} requests at once "
                    f"(REMOE_GATEWAY_MAX_REQUESTS); retry in {retry_ms} ms",
                    retry_after_ms=retry_ms,
                )
            self.active += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
                self._durations_s.append(time.perf_counter() - started)

    def count_served(self) -> None:
        with self._lock:
            self.served += 1

    def _retry_after_ms(self) -> int:
        """When to come back: a recent request's median duration, the time in which the requests in flight turn
        over (lock held). Shorter hints were measured to make 32 clients on 16 slots retry ~20 times each."""
        if not self._durations_s:
            return 1000
        return int(min(60_000, max(100, 1e3 * float(np.median(self._durations_s)))))
