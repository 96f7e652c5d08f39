"""A byte-budgeted LRU of loaded experts, with counters kept where the events happen."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

from remoe.errors import ExpertBudgetError
from remoe.experts.freed_memory import release_freed_memory

ExpertId = tuple[int, int]  # (layer, expert)
V = TypeVar("V")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    loads: int = 0
    bytes_loaded: int = 0
    evictions: int = 0
    load_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    nbytes: int


class ExpertCache(Generic[V]):
    """Holds loaded experts up to `budget_bytes` (None = unbounded); evicts the least recently used."""

    def __init__(self, load: Callable[[ExpertId], tuple[V, int]], budget_bytes: int | None = None) -> None:
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self._load = load
        self.budget_bytes = budget_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[ExpertId, _Entry[V]] = OrderedDict()
        self._resident = 0
        self._lock = threading.Lock()

    @property
    def resident_bytes(self) -> int:
        return self._resident

    def resident(self) -> list[ExpertId]:
        with self._lock:
            return list(self._entries)

    def get(self, expert: ExpertId) -> V:
        with self._lock:
            entry = self._entries.get(expert)
            if entry is not None:
                self._entries.move_to_end(expert)
                self.stats.hits += 1
                return entry.value
            start = time.perf_counter()
            value, nbytes = self._load(expert)
            self.stats.load_seconds += time.perf_counter() - start
            self.stats.loads += 1
            self.stats.bytes_loaded += nbytes
            self._make_room(expert, nbytes)
            self._entries[expert] = _Entry(value, nbytes)
            self._resident += nbytes
        release_freed_memory()  # the load's read buffers and what was evicted; outside the lock: hits go on
        return value

    def _make_room(self, expert: ExpertId, nbytes: int) -> None:
        if self.budget_bytes is None:
            return
        if nbytes > self.budget_bytes:
            raise ExpertBudgetError(
                f"expert {expert} needs {nbytes} bytes, more than the whole budget of {self.budget_bytes} bytes"
            )
        while self._resident + nbytes > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._resident -= evicted.nbytes
            self.stats.evictions += 1

    def clear(self) -> int:
        """Drop every loaded expert now and give its memory back; the number dropped."""
        with self._lock:
            dropped = len(self._entries)
            self._entries.clear()
            self._resident = 0
            self.stats.evictions += dropped
        release_freed_memory()
        return dropped

    def evict(self, expert: ExpertId) -> bool:
        """Drop one expert if resident; True when it was."""
        with self._lock:
            entry = self._entries.pop(expert, None)
            if entry is None:
                return False
            self._resident -= entry.nbytes
            self.stats.evictions += 1
        del entry
        release_freed_memory()
        return True
