"""Updates with a non-finite loss or gradient are skipped instead of applied, counted per optimizer, and a
run that keeps producing them stops with a clear reason instead of training on garbage.

One NaN step (bf16 overflow, a degenerate batch) applied to Adam's moments poisons every later update; the
skipped step leaves weights and optimizer state exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from hwm.training.stop import EXIT_NONFINITE, StopBoard, StopReason
from hwm.training.stream import unwired


def finite(loss: Tensor, params: Iterable[torch.nn.Parameter]) -> Tensor:
    """A 0-dim bool tensor: the loss and every gradient are finite (one reduction, no host sync here)."""
    grads = [p.grad for p in params if p.grad is not None]
    ok = torch.isfinite(loss.detach()).all()
    if grads:
        ok = ok & torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
    return ok


class NonFiniteGuard:
    """Counts skipped steps per optimizer; files a stop after ``limit`` skips of one optimizer in a row."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"model.max_nonfinite must be >= 1; got {limit}")
        self.limit = limit
        self.skipped: dict[str, int] = {}
        self.in_a_row: dict[str, int] = {}
        self._stops: StopBoard = unwired("NonFiniteGuard", "the run's stop board")

    def attach(self, stops: StopBoard) -> None:
        """Where a run of skipped steps files its stop."""
        self._stops = stops

    def record(self, name: str, ok: bool, updates: int) -> None:
        """Notes one optimizer step of ``name``: applied (``ok``) or skipped."""
        if ok:
            self.in_a_row[name] = 0
            return
        self.skipped[name] = self.skipped.get(name, 0) + 1
        self.in_a_row[name] = self.in_a_row.get(name, 0) + 1
        if self.in_a_row[name] == self.limit:
            self._stops.request_stop(
                StopReason(
                    EXIT_NONFINITE,
                    f"{self.limit} {name} updates in a row had a non-finite loss or gradient (skipped, last at "
                    f"update {updates}); the run is diverging",
                    checkpoint=False,
                )
            )

    def metrics(self) -> dict[str, float]:
        """Skipped steps so far per optimizer (logged as ``nonfinite/<optimizer>_skipped``)."""
        return {f"nonfinite/{name}_skipped": float(n) for name, n in self.skipped.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped), "in_a_row": dict(self.in_a_row)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped = dict(state.get("skipped", {}))
        self.in_a_row = dict(state.get("in_a_row", {}))
