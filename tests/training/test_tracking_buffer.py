"""Metrics survive a tracking outage: buffered, retried, sent in order when the server is back; a server
gone for good files a stop; what is unsent travels in the checkpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from lightning.pytorch.loggers import Logger

from hwm.training.stop import EXIT_TRACKING, StopRequests
from hwm.training.tracking_buffer import TrackingBuffer


class FakeFlakyLogger(Logger):
    """Refuses every call while ``down`` is set (a connection error), records what it accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.logged: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "flaky"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: object) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.down.is_set():
            raise ConnectionError("connection refused")
        self.logged.append((int(step or 0), dict(metrics)))


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_outage_buffers_and_the_server_gets_everything_in_order() -> None:
    logger, buffer = FakeFlakyLogger(), TrackingBuffer(retry_seconds=0.05)
    buffer.attach(logger, StopRequests())
    buffer.write({"a": 0.0}, 0)
    _wait(lambda: len(logger.logged) == 1)
    logger.down.set()
    for step in range(1, 6):
        buffer.write({"a": float(step)}, step)  # returns at once: training never waits on the server
    _wait(lambda: buffer.offline)
    assert buffer.buffered == 5
    assert buffer.state_dict() == {"unsent": [[s, {"a": float(s)}] for s in range(1, 6)]}
    logger.down.clear()
    _wait(lambda: buffer.buffered == 0 and not buffer.offline)
    buffer.close()
    assert [step for step, _ in logger.logged] == list(range(6))


def test_server_gone_for_good_files_a_stop_and_close_does_not_hang() -> None:
    logger, stops = FakeFlakyLogger(), StopRequests()
    buffer = TrackingBuffer(give_up_minutes=0.001, retry_seconds=0.02, flush_seconds=30)
    buffer.attach(logger, stops)
    logger.down.set()
    buffer.write({"a": 1.0}, 1)
    _wait(lambda: stops.requested)
    assert stops.reason is not None and stops.reason.status == EXIT_TRACKING and stops.reason.checkpoint
    started = time.monotonic()
    buffer.close()
    assert time.monotonic() - started < 10  # an unreachable server is not waited for
    assert buffer.state_dict()["unsent"] == [[1, {"a": 1.0}]]


def test_resume_sends_what_the_checkpoint_had_not_sent() -> None:
    logger, buffer = FakeFlakyLogger(), TrackingBuffer()
    buffer.attach(logger, StopRequests())
    buffer.skip_until(2)  # the store already has steps up to 2
    buffer.load_state_dict({"unsent": [[2, {"a": 2.0}], [3, {"a": 3.0}]]})
    buffer.write({"a": 4.0}, 4)
    _wait(lambda: len(logger.logged) == 2)
    buffer.close()
    assert [step for step, _ in logger.logged] == [3, 4]


def test_a_batch_stored_before_the_connection_dropped_is_not_logged_twice(tmp_path, monkeypatch) -> None:
    """A server stopped mid-request can store a batch and never answer; the retry must not log it again."""
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="e", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    dropped: list[int] = []
    real = logger.log_metrics

    def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
        real(metrics, step)
        if step == 1 and not dropped:
            dropped.append(step)
            raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(logger, "log_metrics", log_metrics)
    buffer = TrackingBuffer(retry_seconds=0.05)
    buffer.attach(logger, StopRequests())
    for step in range(3):
        buffer.write({"a": float(step), "b": 1.0}, step)
    _wait(lambda: buffer.sent == 3)
    buffer.close()
    assert dropped == [1]
    for key in ("a", "b"):
        history = logger.experiment.get_metric_history(logger.run_id, key)
        assert [m.step for m in history] == [0, 1, 2]
