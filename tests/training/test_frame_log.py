"""The per-frame metric log: one write per frame count, and the run's wall-clock across a resume."""

from __future__ import annotations

import time

import pytest

from hwm.training.frame_log import FrameLog


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
