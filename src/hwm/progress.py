"""A progress bar counted in env frames (the run's budget), not in batches (the stream has no length)."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class FrameProgressBar(TQDMProgressBar):
    """Shows env frames against the budget, updates, and the latest training and evaluation returns."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def init_train_tqdm(self) -> Tqdm:
        # Built with its final description, unit and total: tqdm prints on creation and on every reset, so
        # the parent's "Training: 0/?" bar re-labelled "Epoch 0" would print two empty bars first.
        dm = self.trainer.datamodule
        return Tqdm(
            desc="hwm fit",
            total=int(getattr(dm, "total_frames", 0)) or None,
            initial=int(getattr(dm, "counters", {}).get("env_frames", 0)),
            unit="frame",
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not the parent's: it resets the bar to batches of an unknown total. One epoch is the whole run.
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()

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
            value = getattr(pl_module, "bar_metrics", {}).get(key)
            if value is not None:
                postfix[label] = f"{value:.1f}"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frames = int(getattr(trainer.datamodule, "counters", {}).get("env_frames", 0))
        if self.train_progress_bar.n != frames:
            self.train_progress_bar.n = frames
            self.train_progress_bar.refresh()
