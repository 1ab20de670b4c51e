"""A progress bar counted in env frames (the run's budget), not in batches (the stream has no length)."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from hwm.training.stream import AgentProgress, Stream, TrackingStatus


class FrameProgressBar(TQDMProgressBar):
    """Shows env frames against the budget, updates, and the latest training and evaluation returns."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._stream: Stream | None = None
        self._agent: AgentProgress | None = None
        self._tracking: TrackingStatus | None = None

    def attach(self, stream: Stream, agent: AgentProgress, tracking: TrackingStatus | None = None) -> None:
        """Where the bar's numbers come from: frames from the stream, updates and returns from the agent,
        the tracking server's state from the metric buffer."""
        self._stream, self._agent, self._tracking = stream, agent, tracking

    def _frames(self) -> int:
        return int(self._stream.counters.get("env_frames", 0)) if self._stream is not None else 0

    def init_train_tqdm(self) -> Tqdm:
        # Built with its final description, unit and total: tqdm prints on creation and on every reset, so
        # the parent's "Training: 0/?" bar re-labelled "Epoch 0" would print two empty bars first.
        return Tqdm(
            desc="hwm fit",
            total=(self._stream.total_frames if self._stream is not None else 0) or None,
            initial=self._frames(),
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
        bar = self.train_progress_bar
        bar.n = self._frames()
        postfix: dict[str, Any] = {"updates": self._agent.updates if self._agent is not None else 0}
        shown = self._agent.bar_metrics if self._agent is not None else {}
        for key, label in (("train/episode_return", "return"), ("eval/return", "eval")):
            value = shown.get(key)
            if value is not None:
                postfix[label] = f"{value:.1f}"
        if self._tracking is not None and self._tracking.offline:
            postfix["tracking"] = f"offline, {self._tracking.buffered} steps buffered"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frames = self._frames()
        if self.train_progress_bar.n != frames:
            self.train_progress_bar.n = frames
            self.train_progress_bar.refresh()
