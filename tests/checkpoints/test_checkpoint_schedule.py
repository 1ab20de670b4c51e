"""When checkpoints are written: every so many updates or minutes, at clean points only, and at the end of a
run once, after the final evaluation (even when a periodic save falls on the last update)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fakes import FakeAgentProgress, FakeSavingTrainer, FakeStream, RecordingStopBoard
from hwm.checkpoints.callback import PeriodicCheckpoint


def _train(
    tmp_path: Path,
    every_updates: int,
    updates: int,
    frames_per_update: int,
    every_minutes: float = 0.0,
    clock: list[float] | None = None,
    seconds_per_update: float = 0.0,
    boundary_every: int = 1,
) -> FakeSavingTrainer:
    """Runs the callback through ``updates`` updates of a stream whose budget the last one spends; ``clock``
    (the callback's monotonic time) moves ``seconds_per_update`` per update; every ``boundary_every``-th
    update ends at a clean point."""
    stream = FakeStream(counters={"env_frames": 0}, total_frames=updates * frames_per_update)
    agent = FakeAgentProgress()
    trainer = FakeSavingTrainer(agent)
    callback = PeriodicCheckpoint(
        dirpath=str(tmp_path), every_updates=every_updates, every_minutes=every_minutes
    )
    callback.attach(stream, agent, RecordingStopBoard())
    callback.start_run(tmp_path / "run", {"run_id": "r"})
    fake: Any = trainer  # what the callback uses of Lightning's trainer
    callback.on_train_start(fake, None)  # type: ignore[arg-type]
    for _ in range(updates):
        agent.updates += 1
        stream.counters["env_frames"] += frames_per_update
        stream.at_collect_boundary = agent.updates % boundary_every == 0
        if clock is not None:
            clock[0] += seconds_per_update
        callback.on_train_batch_end(fake, None)  # type: ignore[arg-type]
    stream.stream_finished = True  # the final evaluation ran
    callback.on_train_end(fake, None)  # type: ignore[arg-type]
    return trainer


def test_a_periodic_save_on_the_last_update_is_not_written_again_at_the_end(tmp_path: Path) -> None:
    trainer = _train(tmp_path, every_updates=20, updates=60, frames_per_update=4)
    names = [p.name for p in trainer.saved]
    assert names == ["update-000000020.ckpt", "update-000000040.ckpt", "update-000000060.ckpt"]
    assert (tmp_path / "run" / "last.ckpt").resolve().name == "update-000000060.ckpt"


def test_the_end_of_a_run_saves_once_without_periodic_saves(tmp_path: Path) -> None:
    trainer = _train(tmp_path, every_updates=5000, updates=30, frames_per_update=4)
    assert [p.name for p in trainer.saved] == ["update-000000030.ckpt"]


def test_time_based_checkpoints_come_every_so_many_minutes_at_clean_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("hwm.checkpoints.callback.time.monotonic", lambda: clock[0])
    # 25 s per update, a clean point every second update: a minute has passed at update 3, which ends at no
    # clean point, so the save waits for update 4; the next minute counts from that save and is due at
    # update 7 (75 s), again no clean point: update 8. The end of the budget saves update 10.
    trainer = _train(
        tmp_path,
        every_updates=0,
        updates=10,
        frames_per_update=4,
        every_minutes=1.0,
        clock=clock,
        seconds_per_update=25.0,
        boundary_every=2,
    )
    assert [p.name for p in trainer.saved] == [
        "update-000000004.ckpt",
        "update-000000008.ckpt",
        "update-000000010.ckpt",
    ]
