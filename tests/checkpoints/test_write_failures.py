"""A checkpoint write that fails (disk full, folder unwritable) leaves the previous checkpoint loadable,
is reported, and training goes on; writes that keep failing stop the run."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fakes import FakeAgentProgress, FakeSavingTrainer, FakeStream
from hwm.checkpoints.callback import LAST, PeriodicCheckpoint
from hwm.checkpoints.io import read_checkpoint
from hwm.training.stop import EXIT_CHECKPOINT_WRITES, StopRequests


def _disk_full(obj: Any, f: Any) -> None:
    f.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def saver(tmp_path: Path) -> tuple[PeriodicCheckpoint, FakeSavingTrainer, FakeAgentProgress, StopRequests]:
    agent, stops = FakeAgentProgress(), StopRequests()
    callback = PeriodicCheckpoint(dirpath=str(tmp_path), every_updates=1, max_failed_writes=3)
    callback.attach(FakeStream(counters={"env_frames": 100}), agent, stops)
    callback.start_run(tmp_path / "run", {"run_id": "r"})
    return callback, FakeSavingTrainer(agent), agent, stops


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
