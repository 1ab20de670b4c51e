"""Metrics keyed by update (a world model trained from a dataset), merged per update and written once, so
every series has strictly increasing steps, also across a resume (as :mod:`hwm.training.frame_log` does by
env frames for the agent)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

Write = Callable[[dict[str, float], int], None]


class UpdateLog:
    """Collects the metrics of the current update count; writes them when the count moves on.

    Steps up to ``floor`` are already in the run (a resumed run whose process logged past its checkpoint):
    they are not written again. ``latest`` keeps the last value of every metric (the progress bar's).
    """

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}
        self.step = -1
        self.floor = -1
        self.latest: dict[str, float] = {}
        self._last: tuple[float, int] | None = None

    def skip_until(self, step: int) -> None:
        self.floor = step

    def add(self, metrics: Mapping[str, Any], updates: int, write: Write) -> None:
        """Adds metrics at ``updates`` (with the update count and the update rate since the last call)."""
        merged = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in metrics.items()}
        now = time.perf_counter()
        if self._last is not None and updates > self._last[1]:
            merged["perf/updates_per_s"] = (updates - self._last[1]) / max(now - self._last[0], 1e-9)
        if self._last is None or updates > self._last[1]:
            self._last = (now, updates)
        merged["progress/updates"] = float(updates)
        if updates != self.step:
            self.flush(write)
        self.pending.update(merged)
        self.latest.update(merged)
        self.step = updates

    def flush(self, write: Write) -> None:
        """Writes the current step's metrics (unless the run already has that step)."""
        metrics, self.pending = self.pending, {}
        if metrics and self.step > self.floor:
            write(metrics, self.step)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "metrics": dict(self.pending)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.pending = state["step"], dict(state["metrics"])
