"""A checkpoint write that fails (disk full, folder unwritable) leaves the previous checkpoint loadable,
is reported, and training goes on; writes that keep failing stop the run."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from hwm.checkpoints.callback import LAST, PeriodicCheckpoint
from hwm.checkpoints.io import AtomicCheckpointIO, read_checkpoint
from hwm.training.stop import EXIT_CHECKPOINT_WRITES, StopRequests


class _Stream:
    counters = {"env_frames": 100}
    at_collect_boundary = True
    stream_finished = False
    replay_files: list[str] = []

    def use_replay_dir(self, path: Path) -> None:
        pass


class _Agent:
    updates = 0
    bar_metrics: dict[str, float] = {}


class _Trainer:
    """What PeriodicCheckpoint uses of a trainer: it saves through hwm's atomic checkpoint IO."""

    is_global_zero = True
    world_size = 1

    def __init__(self, agent: _Agent) -> None:
        self.agent, self.io = agent, AtomicCheckpointIO()

    def save_checkpoint(self, path: Path, weights_only: bool = False) -> None:
        checkpoint = {
            "state_dict": {"w": torch.full((4,), float(self.agent.updates))},
            "hwm": {"format_version": 2},
        }
        self.io.save_checkpoint(checkpoint, path)


def _disk_full(obj: Any, f: Any) -> None:
    f.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def saver(tmp_path: Path) -> tuple[PeriodicCheckpoint, _Trainer, _Agent, StopRequests]:
    agent, stops = _Agent(), StopRequests()
    callback = PeriodicCheckpoint(dirpath=str(tmp_path), every_updates=1, max_failed_writes=3)
    callback.attach(_Stream(), agent, stops)
    callback.start_run(tmp_path / "run", {"run_id": "r"})
    return callback, _Trainer(agent), agent, stops


def test_failed_write_keeps_the_previous_checkpoint_and_training_goes_on(
    saver: tuple, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    callback, trainer, agent, stops = saver
    agent.updates = 10
    first = callback.save(trainer, None)
    assert first is not None and callback.failed_writes == 0

    agent.updates = 20
    monkeypatch.setattr(torch, "save", _disk_full)
    with pytest.warns(
        UserWarning, match=r"checkpoint write failed \(ENOSPC: No space left on device; 1 in a row\)"
    ):
        assert callback.save(trainer, None) is None
    monkeypatch.undo()

    run = tmp_path / "run"
    assert (run / LAST).resolve() == first.resolve()
    assert torch.equal(read_checkpoint(run / LAST)["state_dict"]["w"], torch.full((4,), 10.0))
    # No half-written file left behind.
    assert sorted(p.name for p in run.iterdir()) == ["last.ckpt", first.name, first.with_suffix(".json").name]
    assert not stops.requested

    agent.updates = 30  # the disk has room again: the next save succeeds and the count starts over
    assert callback.save(trainer, None) is not None and callback.failed_writes == 0


def test_writes_that_keep_failing_stop_the_run_naming_the_last_good_checkpoint(
    saver: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    callback, trainer, agent, stops = saver
    agent.updates = 10
    first = callback.save(trainer, None)
    monkeypatch.setattr(torch, "save", _disk_full)
    for n in range(1, 4):
        agent.updates += 10
        with pytest.warns(UserWarning, match="checkpoint write failed"):
            callback.save(trainer, None)
        assert stops.requested == (n == 3)
    assert stops.reason is not None and stops.reason.status == EXIT_CHECKPOINT_WRITES
    assert not stops.reason.checkpoint  # no point writing once more
    assert f"last good checkpoint: {first}" in stops.reason.message


def test_unwritable_folder_is_a_failed_write(saver: tuple, tmp_path: Path) -> None:
    callback, trainer, agent, stops = saver
    callback.start_run(tmp_path / "file-not-folder" / "run", {"run_id": "r"})
    (tmp_path / "file-not-folder").write_text("a file where the folder should be")
    agent.updates = 10
    with pytest.warns(UserWarning, match="checkpoint write failed"):
        assert callback.save(trainer, None) is None
    assert callback.failed_writes == 1
