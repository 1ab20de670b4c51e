"""A progress bar counted in env frames (the run's budget), not in batches (the stream has no length)."""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hwm.training.stream import AgentProgress, Stream, TrackingStatus, unwired

# Lightning's own logger: its console handler prints rank_zero_info lines, hwm's notices among them.
LIGHTNING_LOG = "lightning.pytorch"


class FrameProgressBar(TQDMProgressBar):
    """Shows env frames against the budget, updates, and the latest training and evaluation returns."""

    UNIT = "frame"
    # (logged metric, label, format) shown beside the bar once the agent has a value.
    SHOWN: tuple[tuple[str, str, str], ...] = (
        ("train/episode_return", "return", ".1f"),
        ("eval/return", "eval", ".1f"),
    )

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._stream: Stream = unwired("FrameProgressBar", "the data stream")
        self._agent: AgentProgress = unwired("FrameProgressBar", "the agent")
        self._open = False  # whether this run's bar has been shown (the parent's reference is private)
        # While the bar is shown, Lightning's log lines (hwm's checkpoint notices among them) go through
        # tqdm.write, which clears the bar, prints the line and redraws it, instead of into the bar's line.
        self._redirect = ExitStack()
        self._tracking: TrackingStatus = unwired("FrameProgressBar", "the metric buffer")

    def attach(self, stream: Stream, agent: AgentProgress, tracking: TrackingStatus) -> None:
        """Where the bar's numbers come from: frames from the stream, updates and returns from the agent,
        the tracking server's state from the metric buffer."""
        self._stream, self._agent, self._tracking = stream, agent, tracking

    def _frames(self) -> int:
        """Where the bar stands."""
        return int(self._stream.counters.get("env_frames", 0))

    def _total(self) -> int:
        """The bar's end (0: unknown)."""
        return self._stream.total_frames

    def init_train_tqdm(self) -> Tqdm:
        # Built with its final description, unit and total: tqdm prints on creation and on every reset, so
        # the parent's "Training: 0/?" bar re-labelled "Epoch 0" would print two empty bars first.
        return Tqdm(
            desc="hwm fit",
            total=self._total() or None,
            initial=self._frames(),
            unit=self.UNIT,
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # not the parent's bar of batches: this one opens with the first batch (_show)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not the parent's: it resets the bar to batches of an unknown total. One epoch is the whole run, and
        # the bar opens with its first batch, after the prefill, so the prefill's notice is not printed into
        # it (a resumed run's first batch comes at once).
        self._open = False

    def _show(self) -> None:
        """Frames and the latest returns on the bar, opened on first use."""
        if not self._open:
            self.train_progress_bar = self.init_train_tqdm()
            self._open = True
            log = logging.getLogger(LIGHTNING_LOG)
            # Only where Lightning prints to the console itself (it does unless logging was set up before).
            if any(
                type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)
                for h in log.handlers
            ):
                self._redirect.enter_context(logging_redirect_tqdm(loggers=[log]))
        bar = self.train_progress_bar
        bar.n = self._frames()
        postfix: dict[str, Any] = {"updates": self._agent.updates}
        shown = self._agent.bar_metrics
        for key, label, spec in self.SHOWN:
            value = shown.get(key)
            if value is not None:
                postfix[label] = format(value, spec)
        if self._tracking.offline:
            postfix["tracking"] = f"offline, {self._tracking.buffered} steps buffered"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._open or (batch_idx + 1) % max(self.refresh_rate, 1) == 0:
            self._show()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The final evaluation is logged by the agent's epoch-end hook, which runs after this one: the bar is
        # brought up to date in on_train_end instead.
        pass

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._open:
            self._show()  # the last frames and the final evaluation, not the values of the last update
            self.train_progress_bar.close()
        self._redirect.close()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._redirect.close()  # the error's own lines print as usual


class UpdateProgressBar(FrameProgressBar):
    """Counts updates against the run's budget of updates (a world model trained from a dataset), with the
    latest held-out errors."""

    UNIT = "update"
    SHOWN = (("heldout/reward_mse", "reward mse", ".4g"), ("heldout/obs_mse", "obs mse", ".4g"))

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._budget = 0

    def set_budget(self, updates: int) -> None:
        """The run's budget of updates, the bar's end."""
        self._budget = updates

    def _frames(self) -> int:
        return self._agent.updates

    def _total(self) -> int:
        return self._budget
