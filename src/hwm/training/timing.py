"""Where an update's time goes: named stopwatch sections summed between reads.

The data module times collection and replay sampling, the agent times the world-model step, the
imagination + actor-critic steps, the harmonizer and logging; the agent logs the split as ``time/*``
metrics (milliseconds per update) and ``benchmarks/throughput.py`` reads it directly. On a GPU, kernels
run asynchronously, so GPU time lands in whichever section next waits for it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)  # since the last pop()
        self.cumulative: dict[str, float] = defaultdict(float)  # since construction

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.totals[name] += elapsed
            self.cumulative[name] += elapsed

    def pop(self) -> dict[str, float]:
        """Seconds per section since the last pop."""
        out, self.totals = dict(self.totals), defaultdict(float)
        return out
