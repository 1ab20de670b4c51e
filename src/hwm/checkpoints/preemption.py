"""Stopping a run early without losing it: on a preemption signal (or any other filed reason to stop) the
run takes a checkpoint at the next clean point, ends its MLflow record and exits with a documented status;
under SLURM a requeue-signal stop requeues the job, which then resumes by itself (``hwm.cli.main``).

Signals are only noted by the handler (it runs between two bytecodes of whatever the run is doing); the
work happens in ``on_train_batch_end``, after an update, where the stream is consistent.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from hwm.checkpoints.callback import PeriodicCheckpoint
from hwm.training.stop import EXIT_PREEMPTED, StopReason, StopRequests
from hwm.training.stream import AgentProgress, CheckpointedStream, unwired

Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None


def signal_number(name: str) -> signal.Signals:
    """``SIGTERM``, ``TERM`` or ``15`` -> signal.SIGTERM; ValueError (one line) for anything else."""
    text = name.strip().upper()
    try:
        return (
            signal.Signals(int(text)) if text.isdigit() else signal.Signals[f"SIG{text.removeprefix('SIG')}"]
        )
    except (KeyError, ValueError):
        raise ValueError(
            f"preemption.signals: {name!r} is not a signal name (e.g. SIGTERM, SIGUSR1)"
        ) from None


def slurm_job_id() -> str | None:
    """This SLURM job's id as ``scontrol`` names it (array tasks: ``<array job>_<task>``); None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


class Preemption(Callback):
    """Checkpoints and stops the run on a signal or another filed reason (:class:`~hwm.training.stop.StopRequests`).

    Args:
        signals: signals that stop the run with a checkpoint at the next clean point (exit status 75).
            Ctrl-C (SIGINT) does the same once; a second Ctrl-C stops at once, without a checkpoint.
    """

    def __init__(self, *, signals: list[str] | None = None) -> None:
        names = ["SIGTERM", "SIGUSR1"] if signals is None else signals
        self.signals = [signal_number(n) for n in names]
        if signal.SIGKILL in self.signals or signal.SIGSTOP in self.signals:
            raise ValueError("preemption.signals: SIGKILL and SIGSTOP cannot be caught")
        self.stops = StopRequests()
        self.received: signal.Signals | None = None
        self.forced = False  # a second Ctrl-C: stopped at once
        self.saved: Path | None = None
        self._requeue_signal: signal.Signals | None = None
        self._stream: CheckpointedStream = unwired("Preemption", "the data stream")
        self._agent: AgentProgress = unwired("Preemption", "the agent")
        self._checkpoint: PeriodicCheckpoint | None = None  # checkpointing off
        self._previous: dict[signal.Signals, Handler] = {}

    def attach(
        self,
        stream: CheckpointedStream,
        agent: AgentProgress,
        checkpoint: PeriodicCheckpoint | None,
        *,
        requeue_signal: signal.Signals | None = None,
    ) -> None:
        """Where clean points come from, who saves (None: checkpointing is off), and the signal after which
        the SLURM job is requeued (Lightning's SLURM environment with ``auto_requeue``; None: no requeue)."""
        self._stream, self._agent, self._checkpoint = stream, agent, checkpoint
        self._requeue_signal = requeue_signal

    # -- signals ------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.received == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt
        if self.received is None:
            self.received = sig
            self.stops.request_stop(
                StopReason(EXIT_PREEMPTED, f"stopped by {sig.name} at a clean point", checkpoint=True)
            )
            more = " (Ctrl-C again stops at once, without one)" if sig == signal.SIGINT else ""
            # os.write: print() is not safe to re-enter if the signal interrupted another print.
            os.write(
                2,
                f"\nhwm: {sig.name} received: checkpointing after this update, then exiting{more}\n".encode(),
            )

    def install(self) -> None:
        """Routes the run's stop signals here (again after Lightning installed its own at the start of fit)."""
        for sig in {*self.signals, signal.SIGINT}:
            previous = signal.signal(sig, self._on_signal)
            if previous != self._on_signal:
                self._previous.setdefault(sig, previous)

    def uninstall(self) -> None:
        """Gives the signals back (``hwm fit`` does, once the run has ended and reported)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own SIGTERM handler stops after the current batch without a checkpoint, and under SLURM
        # its SIGUSR1 handler saves in the middle of an update: ours replace them for the run.
        self.install()

    # -- acting at a clean point --------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        requested = self.stops.requested
        if trainer.world_size > 1:
            # Saving and stopping are collective: any process's reason stops them all.
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested or self._stream.stream_finished:
            return
        reason = self.stops.reason or StopReason(EXIT_PREEMPTED, "stopped by another process's signal")
        if self.stops.reason is None:
            self.stops.request_stop(reason)
        checkpoint = reason.checkpoint
        if trainer.world_size > 1:  # a reason that forbids a checkpoint on one process forbids it on all
            checkpoint = trainer.strategy.reduce_boolean_decision(checkpoint, all=True)
        if checkpoint and self._checkpoint is not None:
            if not self._stream.at_collect_boundary:
                return  # the next update ends at one (an update's worth of steps is one collect)
            self.saved = self._checkpoint.save_unless_saved(trainer, pl_module)
        trainer.should_stop = True
        if self.received is not None and self.received == self._requeue_signal and trainer.is_global_zero:
            self._requeue()

    def _requeue(self) -> None:
        job = slurm_job_id()
        if job is None:
            return
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            rank_zero_warn(f"hwm: could not requeue SLURM job {job}: {exc}")
            return
        if result.returncode == 0:
            rank_zero_info(f"hwm: requeued SLURM job {job}; it resumes from the checkpoint by itself")
        else:
            rank_zero_warn(
                f"hwm: scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()}"
            )
