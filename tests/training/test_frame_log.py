"""The per-frame metric log around a stop and a resume: a stopped run's last step reaches the tracking store,
and a resume neither loses nor repeats a metric at any step; the run's wall-clock across a resume."""

from __future__ import annotations

import time

import pytest

from hwm.training.frame_log import FrameLog


class RecordingStore:
    """Stands in for the tracking store: every (metric, step) written, in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int]] = []

    def write(self, metrics: dict[str, float], step: int) -> None:
        self.writes += [(key, step) for key in metrics]

    def steps(self, key: str) -> list[int]:
        return [step for k, step in self.writes if k == key]

    @property
    def last_step(self) -> int:
        return max((step for _, step in self.writes), default=-1)


def _add(log: FrameLog, store: RecordingStore, frames: int, **metrics: float) -> None:
    log.add(metrics, frames=frames, updates=frames // 10, episodes=0, write=store.write)


def _stopped_run(store: RecordingStore) -> dict:
    """A run logs at 10 and 20 frames, checkpoints at 20 (its step unwritten), then stops and flushes."""
    log = FrameLog()
    _add(log, store, 10, loss=1.0)
    _add(log, store, 20, loss=0.5)
    checkpoint = log.state_dict()
    log.flush(store.write)  # the stop: the last step goes out after the checkpoint
    return checkpoint


def _resume(checkpoint: dict, store_has: int) -> FrameLog:
    log = FrameLog()
    log.skip_until(store_has)  # the CLI reads the store's last step first, then Lightning loads the state
    log.load_state_dict(checkpoint)
    return log


def test_a_stopped_run_writes_its_last_step() -> None:
    store = RecordingStore()
    _stopped_run(store)
    assert store.steps("loss") == [10, 20] and store.steps("progress/env_frames") == [10, 20]


def test_a_resume_after_a_stop_writes_only_what_the_last_step_gains() -> None:
    store = RecordingStore()
    checkpoint = _stopped_run(store)
    log = _resume(checkpoint, store.last_step)
    _add(log, store, 20, **{"eval/return": 7.0})  # the final evaluation at the stop's frames
    _add(log, store, 30, loss=0.2)
    log.flush(store.write)
    assert store.steps("eval/return") == [20]
    for key in ("loss", "progress/env_frames", "progress/updates"):
        steps = store.steps(key)
        assert steps == sorted(set(steps)), f"{key} written twice at a step: {steps}"
    assert store.steps("loss") == [10, 20, 30]


def test_a_resume_writes_the_last_step_when_the_stop_could_not() -> None:
    store = RecordingStore()
    log = FrameLog()
    _add(log, store, 10, loss=1.0)
    _add(log, store, 20, loss=0.5)
    checkpoint = log.state_dict()  # the tracking server was down: step 20 never reached the store
    resumed = _resume(checkpoint, store.last_step)
    _add(resumed, store, 30, loss=0.2)
    assert store.steps("loss") == [10, 20]


def test_steps_a_dead_process_wrote_after_its_checkpoint_are_not_written_again() -> None:
    store = RecordingStore()
    log = FrameLog()
    _add(log, store, 10, loss=1.0)
    _add(log, store, 20, loss=0.5)
    checkpoint = log.state_dict()
    _add(log, store, 30, loss=0.4)
    _add(log, store, 40, loss=0.3)  # killed here: 10, 20 and 30 are in the store
    resumed = _resume(checkpoint, store.last_step)
    for frames in (20, 30, 40, 50):  # the replay from the checkpoint
        _add(resumed, store, frames, loss=0.1)
    resumed.flush(store.write)
    assert store.steps("loss") == [10, 20, 30, 40, 50]


def test_metrics_of_one_frame_count_are_written_once_when_the_count_moves_on() -> None:
    written: list[tuple[int, dict[str, float]]] = []
    log = FrameLog()
    log.add({"a": 1.0}, frames=10, updates=1, episodes=0, write=lambda m, s: written.append((s, m)))
    log.add({"b": 2.0}, frames=10, updates=2, episodes=0, write=lambda m, s: written.append((s, m)))
    assert written == []
    log.add({"c": 3.0}, frames=20, updates=3, episodes=1, write=lambda m, s: written.append((s, m)))
    assert [s for s, _ in written] == [10]
    assert {"a", "b", "progress/train_minutes"} <= set(written[0][1])


def test_train_minutes_continue_from_the_checkpoint_after_a_resume() -> None:
    before = FrameLog()
    time.sleep(0.05)
    state = before.state_dict()
    assert state["elapsed_s"] >= 0.05
    resumed = FrameLog()
    resumed.load_state_dict(state)
    written: list[dict[str, float]] = []
    resumed.add({}, frames=1, updates=1, episodes=0, write=lambda m, s: written.append(m))
    resumed.flush(lambda m, s: written.append(m))
    minutes = written[-1]["progress/train_minutes"]
    assert minutes * 60 == pytest.approx(state["elapsed_s"], abs=0.05)  # not restarted from zero
    # A checkpoint written before the clock was saved resumes from zero.
    old = FrameLog()
    old.load_state_dict({"step": 5, "metrics": {}})
    assert old.elapsed_s() < 1.0
