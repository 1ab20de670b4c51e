"""The contracts between the parts of a run, so that none of them reaches another through the trainer.

A run's objects talk along these lines (the CLI hands each its collaborators, ``hwm.cli.wiring``):

- batches go *down*: the data module's stream yields replayed sequences to the agent's training step;
- the policy goes *across*: the data module collects and evaluates with the agent's policy
  (:class:`PolicySource`);
- counters, metrics, recorded episodes and timings come *up*: the agent, the checkpoint callback and the
  progress bar read them from the data module (:class:`Stream`, :class:`CheckpointedStream`);
- the agent's own counters and bar metrics go to the callbacks (:class:`AgentProgress`).
- a saved dataset's held-out episodes are scored *across*: the offline data module scores them with the
  learner's world model (:class:`HeldOutScorer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from hwm.training.timing import Stopwatch

if TYPE_CHECKING:
    from tensordict import TensorDictBase
    from torch import Tensor

    from hwm.models.policy import DreamerPolicy
    from hwm.training.media import EvalEpisode


class Stream(Protocol):
    """What the agent and the progress bar read from the data stream."""

    @property
    def counters(self) -> Mapping[str, float]:
        """Global counts: ``env_frames``, ``agent_steps``, ``episodes``, ``evaluations``, ..."""
        ...

    @property
    def total_frames(self) -> int:
        """The run's env-frame budget."""
        ...

    @property
    def timer(self) -> Stopwatch:
        """Time spent collecting, replaying and evaluating."""
        ...

    @property
    def stream_finished(self) -> bool:
        """True once the frame budget is spent (a run that ends before stopped early)."""
        ...

    def pop_metrics(self) -> dict[str, float]:
        """Metrics gathered since the last call (train and eval returns, success rates, ...)."""
        ...

    def pop_media(self) -> list[EvalEpisode]:
        """Evaluation episodes recorded since the last call."""
        ...


class CheckpointedStream(Stream, Protocol):
    """What the checkpoint callback needs besides: where to cut, and where the replay's files go."""

    @property
    def at_collect_boundary(self) -> bool:
        """True when the stream's next move is to collect: a clean point for a checkpoint."""
        ...

    @property
    def replay_files(self) -> list[str]:
        """The replay chunk files (relative to the run folder) the last saved state needs."""
        ...

    def use_replay_dir(self, path: Path) -> None:
        """The run folder: saved states write their replay chunks under it, restored ones read them."""
        ...


class MetricSink(Protocol):
    """Where the agent writes its metrics (keyed by env frames): the tracking buffer."""

    def write(self, metrics: dict[str, float], step: int) -> None: ...


class TrackingStatus(Protocol):
    """The tracking server as the metric buffer sees it, for the progress bar."""

    @property
    def offline(self) -> bool: ...

    @property
    def buffered(self) -> int: ...


class PolicySource(Protocol):
    """What the data module collects and evaluates with."""

    def policy(self) -> DreamerPolicy: ...


class AgentProgress(Protocol):
    """What the callbacks read of the agent."""

    @property
    def updates(self) -> int:
        """Completed updates (world model + actor-critic)."""
        ...

    @property
    def bar_metrics(self) -> Mapping[str, float]:
        """The latest training and evaluation returns, for the progress bar."""
        ...


# The per-step errors a HeldOutScorer returns for a [B, T] batch of held-out windows, each [B, T].
REWARD_ERROR, OBS_ERROR, KL = "reward_sq_error", "obs_sq_error", "kl"


class HeldOutScorer(Protocol):
    """What a dataset's held-out episodes are scored with (training a world model from a dataset): the
    learner's world model, handed to the data module, which owns the held-out data and the schedule."""

    def heldout_errors(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """Per-step errors [B, T]: ``reward_sq_error`` (the reward head's mean against the reward),
        ``obs_sq_error`` (the decoder's mean, averaged over the observation's elements) and ``kl``."""
        ...


class _Unwired:
    """A collaborator not handed in yet: any use of it fails at once, naming who was not wired."""

    def __init__(self, owner: str, role: str) -> None:
        object.__setattr__(
            self, "_why", f"{owner} was used before it was wired: hwm.cli.wiring hands it {role}"
        )

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):  # copy, pickle and hasattr ask for optional hooks: say there are none
            raise AttributeError(name)
        raise RuntimeError(object.__getattribute__(self, "_why"))

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise RuntimeError(object.__getattribute__(self, "_why"))


def unwired(owner: str, role: str) -> Any:
    """What an object holds in place of a collaborator until ``hwm.cli.wiring`` hands it the real one.

    The wiring hands every collaborator in (its methods take them as required, typed by the protocols
    above), so the objects never test for a missing one; a use outside the wiring (a test that forgot a
    collaborator) fails on first use with one line instead of an ``AttributeError`` on ``None``.
    """
    return _Unwired(owner, role)
