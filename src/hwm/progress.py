"""A progress bar counted in env frames (the run's budget), not in batches (the stream has no length)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class FrameProgressBar(TQDMProgressBar):
    """Shows env frames against the budget, updates, and the latest training and evaluation returns."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        dm = trainer.datamodule
        bar = self.train_progress_bar
        bar.reset(total=int(getattr(dm, "total_frames", 0)) or None)
        bar.unit = "frame"
        bar.set_description("hwm fit")
        bar.n = int(getattr(dm, "counters", {}).get("env_frames", 0))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % max(self.refresh_rate, 1):
            return
        counters = getattr(trainer.datamodule, "counters", {})
        bar = self.train_progress_bar
        bar.n = int(counters.get("env_frames", 0))
        postfix: dict[str, Any] = {"updates": int(getattr(pl_module, "updates", 0))}
        for key, label in (("train/episode_return", "return"), ("eval/return", "eval")):
            value = getattr(pl_module, "_bar_metrics", {}).get(key)
            if value is not None:
                postfix[label] = f"{value:.1f}"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar.n = int(getattr(trainer.datamodule, "counters", {}).get("env_frames", 0))
        self.train_progress_bar.refresh()
