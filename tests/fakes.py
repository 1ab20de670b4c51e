"""Stand-ins for the parts of a run, each named for what it fakes and typed against the contract it stands in
for (hwm/training/stream.py): mypy (``nox -s lint``) checks them as it checks the real ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hwm.checkpoints.io import AtomicCheckpointIO
from hwm.training.media import EvalEpisode
from hwm.training.stop import StopBoard, StopReason
from hwm.training.stream import AgentProgress, CheckpointedStream, MetricSink, Stream, TrackingStatus
from hwm.training.timing import Stopwatch


@dataclass
class FakeStream:
    """A data stream that collects nothing: its counters and flags are set by the test."""

    counters: dict[str, float] = field(default_factory=lambda: {"env_frames": 0})
    total_frames: int = 400
    stream_finished: bool = False
    at_collect_boundary: bool = True
    replay_files: list[str] = field(default_factory=list)
    timer: Stopwatch = field(default_factory=Stopwatch)
    metrics: dict[str, float] = field(default_factory=dict)  # what the next pop_metrics() returns
    replay_dirs: list[Path] = field(default_factory=list)  # every use_replay_dir() call

    def pop_metrics(self) -> dict[str, float]:
        out, self.metrics = self.metrics, {}
        return out

    def pop_media(self) -> list[EvalEpisode]:
        return []

    def use_replay_dir(self, path: Path) -> None:
        self.replay_dirs.append(path)


@dataclass
class FakeAgentProgress:
    """The agent as the callbacks read it: an update counter and the bar's returns, set by the test."""

    updates: int = 0
    bar_metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass
class RecordingSink:
    """A metric buffer that keeps what the agent writes: (step, metrics) in order."""

    written: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def write(self, metrics: dict[str, float], step: int) -> None:
        self.written.append((step, dict(metrics)))


@dataclass
class FakeTrackingStatus:
    offline: bool = False
    buffered: int = 0


@dataclass
class RecordingStopBoard:
    """A stop board that keeps every reason filed."""

    reasons: list[StopReason] = field(default_factory=list)

    def request_stop(self, reason: StopReason) -> None:
        self.reasons.append(reason)


class FakeSavingTrainer:
    """What PeriodicCheckpoint uses of a trainer: it saves a small state through hwm's atomic checkpoint IO
    and keeps the paths it wrote, in order."""

    is_global_zero = True
    world_size = 1
    should_stop = False

    def __init__(self, agent: FakeAgentProgress) -> None:
        self.agent, self.io = agent, AtomicCheckpointIO()
        self.saved: list[Path] = []

    def save_checkpoint(self, path: Path, weights_only: bool = False) -> None:
        checkpoint = {
            "state_dict": {"w": torch.full((4,), float(self.agent.updates))},
            "hwm": {"format_version": 2},
        }
        self.io.save_checkpoint(checkpoint, path)
        self.saved.append(path)


def _conforms(
    stream: FakeStream,
    agent: FakeAgentProgress,
    sink: RecordingSink,
    tracking: FakeTrackingStatus,
    stops: RecordingStopBoard,
) -> tuple[Stream, CheckpointedStream, AgentProgress, MetricSink, TrackingStatus, StopBoard]:
    """Never called: the type checker holds each fake to the contract it stands in for."""
    return stream, stream, agent, sink, tracking, stops
