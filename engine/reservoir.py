"""A uniform sample of the queries a collection has served (reservoir sampling, Vitter's algorithm R).

Opt-in per collection (``configure(query_reservoir=N)``); it feeds query-aware training such as LeanVec-OOD,
so the projection can be re-learned from live traffic. Held in memory only: it refills after a restart.
"""

from __future__ import annotations

import threading

import numpy as np


class QueryReservoir:
    def __init__(self, capacity: int, dim: int, *, seed: int = 0) -> None:
        self.capacity = capacity
        self._rows = np.zeros((capacity, dim), np.float32)
        self._seen = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return min(self._seen, self.capacity)

    def offer(self, queries: np.ndarray) -> None:
        """Consider each query row for the sample: the i-th query ever offered is kept with probability cap / i."""
        if self.capacity == 0:
            return
        with self._lock:
            for q in queries:
                if self._seen < self.capacity:
                    self._rows[self._seen] = q
                else:
                    j = int(self._rng.integers(0, self._seen + 1))
                    if j < self.capacity:
                        self._rows[j] = q
                self._seen += 1

    def sample(self) -> np.ndarray:
        with self._lock:
            return self._rows[: len(self)].copy()
