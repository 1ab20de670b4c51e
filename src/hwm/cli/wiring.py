"""Every hand-over between a run's objects, in one place (docs/architecture.md, "Who talks to whom").

LightningCLI builds the objects from the config; this module hands each its collaborators. Every method
that takes one requires it, typed by the protocols of ``hwm/training/stream.py``, so the type checker
(``nox -s lint``) checks each object against the contract it is handed as, and no object tests for a
missing collaborator at run time. The only optional parts are optional by configuration: the checkpoint
callback (``trainer.enable_checkpointing: false``) and the progress bar.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.loggers import Logger

from hwm.agent import HarmonyDreamAgent
from hwm.checkpoints.callback import PeriodicCheckpoint
from hwm.checkpoints.io import AtomicCheckpointIO
from hwm.checkpoints.preemption import Preemption
from hwm.data.datamodule import ReplayDataModule
from hwm.data.offline import OfflineDataModule
from hwm.learner import WorldModelLearner
from hwm.training.progress import FrameProgressBar, UpdateProgressBar
from hwm.training.tracking_buffer import TrackingBuffer

C = TypeVar("C", bound=Callback)


def link(parser: LightningArgumentParser) -> None:
    """What one object's constructor takes from another: the env's facts (shapes, discrete actions), which
    the data module probes (or reads off a saved dataset), become the agent's (or the learner's) network
    shapes."""
    parser.link_arguments("data.env_info", "model.env_info", apply_on="instantiate")


@dataclass(frozen=True)
class RunCallbacks:
    """hwm's callbacks of a run, found among the trainer's."""

    preemption: Preemption
    tracking: TrackingBuffer
    checkpoint: PeriodicCheckpoint | None  # checkpointing off
    progress_bar: FrameProgressBar | None  # progress bar off

    @classmethod
    def find(cls, callbacks: Sequence[Callback]) -> RunCallbacks:
        def one(kind: type[C]) -> C | None:
            found = [cb for cb in callbacks if isinstance(cb, kind)]
            if len(found) > 1:
                raise ValueError(f"trainer.callbacks: hwm fit adds its own {kind.__name__}; remove the other")
            return found[0] if found else None

        preemption, tracking = one(Preemption), one(TrackingBuffer)
        if preemption is None or tracking is None:  # hwm's parser always adds both
            raise RuntimeError("hwm fit runs with its Preemption and TrackingBuffer callbacks")
        return cls(preemption, tracking, one(PeriodicCheckpoint), one(FrameProgressBar))


def wire(
    agent: HarmonyDreamAgent,
    data: ReplayDataModule,
    logger: Logger | None,
    callbacks: RunCallbacks,
    requeue_signal: signal.Signals | None,
) -> None:
    """Hands each object its collaborators: the stream to the agent and the callbacks, the agent (its
    policy, its counters) to the stream and the callbacks, the stop board to all who file stops."""
    stops = callbacks.preemption.stops
    agent.attach(stream=data, stops=stops, sink=callbacks.tracking)
    data.attach_agent(agent)
    callbacks.tracking.attach(logger, stops)
    callbacks.preemption.attach(data, agent, callbacks.checkpoint, requeue_signal=requeue_signal)
    if callbacks.checkpoint is not None:
        callbacks.checkpoint.attach(data, agent, stops)
    if callbacks.progress_bar is not None:
        callbacks.progress_bar.attach(data, agent, callbacks.tracking)


def wire_offline(
    learner: WorldModelLearner,
    data: OfflineDataModule,
    logger: Logger | None,
    callbacks: RunCallbacks,
    requeue_signal: signal.Signals | None,
) -> None:
    """A world model trained from a dataset (``hwm.cli.offline``): the learner takes the agent's place (it
    has no policy to hand the data), the data module scores its held-out windows with the learner, and the
    progress bar counts updates against the dataset run's budget."""
    stops = callbacks.preemption.stops
    learner.attach(stream=data, stops=stops, sink=callbacks.tracking)
    data.attach_scorer(learner)
    callbacks.tracking.attach(logger, stops)
    callbacks.preemption.attach(data, learner, callbacks.checkpoint, requeue_signal=requeue_signal)
    if callbacks.checkpoint is not None:
        callbacks.checkpoint.attach(data, learner, stops)
    if callbacks.progress_bar is not None:
        callbacks.progress_bar.attach(data, learner, callbacks.tracking)
        if isinstance(callbacks.progress_bar, UpdateProgressBar):  # hwm.cli.offline's bar
            callbacks.progress_bar.set_budget(data.total_updates)


def wire_run_folder(callbacks: RunCallbacks, run_dir: Path, run_info: dict[str, Any]) -> None:
    """Once the MLflow run exists: where the checkpoints go, and what each records about the run."""
    if callbacks.checkpoint is not None:
        callbacks.checkpoint.start_run(run_dir, run_info)


def wire_resume(
    agent: HarmonyDreamAgent | WorldModelLearner,
    callbacks: RunCallbacks,
    io: Any,
    path: Path,
    checkpoint: dict[str, Any],
    logged_step: int | None,
) -> None:
    """A resume: the checkpoint already read goes to the checkpoint IO (not read twice), and steps the
    tracking store already has (up to ``logged_step``; None: no store) are not logged again."""
    if logged_step is not None:
        agent.resume_logging_after(logged_step)
        callbacks.tracking.skip_until(logged_step)
    if isinstance(io, AtomicCheckpointIO):
        io.preload(path, checkpoint)
