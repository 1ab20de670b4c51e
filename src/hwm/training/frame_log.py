"""Metrics keyed by env frames, merged per frame count and written once, so every MLflow series has strictly
increasing steps (also across a resume)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

# What the progress bar shows of the logged metrics.
BAR_KEYS = ("train/episode_return", "eval/return")


class FrameLog:
    """Collects metrics for the current env-frame count; writes them when the count moves on.

    ``write(metrics, step)`` is the logger's (the agent passes its own, which writes on rank 0 only). Steps
    up to ``floor`` are already in the run (a resumed run whose killed process logged past its checkpoint,
    or a run that stopped and wrote its last step): they are not written again. A checkpoint carries the
    current step's metrics unwritten (``state_dict``), and a run that stops writes them after its
    checkpoint. A resume that finds its checkpoint's step in the run (written by that stop, or by a process
    that went on and died) writes only what the step gains afterwards (a final evaluation at these frames):
    every metric's steps stay strictly increasing.

    ``progress/train_minutes`` is the run's wall-clock time: this process's since it was built plus, for a
    resumed run, the earlier processes' up to the checkpoint it resumed (work redone after a crash counts
    once, the time the run was down not at all), so minutes-to-a-score compare across interrupted runs.
    """

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}
        self.step = -1
        self.floor = -1
        self.sent: set[str] = set()  # metrics of the current step already written
        self._settled = False  # the run has the current step, and ``sent`` says which of its metrics
        self.bar_metrics: dict[str, float] = {}
        self._last: tuple[float, int] | None = None
        self._started = time.perf_counter()
        self._elapsed_before = 0.0

    def skip_until(self, step: int) -> None:
        """Steps up to ``step`` are already in the run: they are not written again."""
        self.floor = step
        self._settle()

    def _settle(self) -> None:
        # The run already has the current step: its pending metrics were written (the process that wrote
        # the checkpoint stopped and flushed them); later additions to the step are written.
        if self.step == self.floor and self.step >= 0:
            self.sent |= set(self.pending)
            self.pending = {}
            self._settled = True

    def add(
        self,
        metrics: Mapping[str, Any],
        *,
        frames: int,
        updates: int,
        episodes: float,
        write: Callable[[dict[str, float], int], None],
    ) -> None:
        """Adds metrics at ``frames`` (with progress counters and the update rate since the last call)."""
        merged = dict(metrics)
        now = time.perf_counter()
        if self._last is not None and updates > self._last[1]:
            merged["perf/updates_per_s"] = (updates - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, updates)
        merged["progress/updates"] = updates
        merged["progress/env_frames"] = frames
        merged["progress/episodes"] = episodes
        merged["progress/train_minutes"] = self.elapsed_s(now) / 60.0
        flat = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in merged.items()}
        if frames != self.step:
            self.flush(write)
            self.sent, self._settled = set(), False
        self.pending.update(flat)
        self.step = frames
        self.bar_metrics.update({k: flat[k] for k in BAR_KEYS if k in flat})

    def flush(self, write: Callable[[dict[str, float], int], None]) -> None:
        """Writes the current step's metrics not yet written (unless the run is past that step)."""
        metrics = {k: v for k, v in self.pending.items() if k not in self.sent}
        self.pending = {}
        # At the run's last step only when what it holds of it is known; else that step is its own.
        if metrics and (self.step > self.floor or (self.step == self.floor and self._settled)):
            write(metrics, self.step)
            self.sent |= set(metrics)

    def elapsed_s(self, now: float | None = None) -> float:
        """Seconds of the run's wall-clock so far (earlier processes' included)."""
        return self._elapsed_before + (time.perf_counter() if now is None else now) - self._started

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "metrics": dict(self.pending),
            "sent": sorted(self.sent),
            "elapsed_s": self.elapsed_s(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.pending = state["step"], dict(state["metrics"])
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self.sent = set(state.get("sent", []))
        self._settle()
