"""Metrics that survive a tracking-server outage: written to a queue, sent by a background thread that
retries until the server answers, so training never waits on (or dies with) the server.

While the server is unreachable the log and the progress bar say so; when it is back the queue drains in
order (every series keeps strictly increasing steps). Whatever is still unsent when a checkpoint is taken
travels in it and is sent after a resume. A server gone for ``give_up_minutes`` files a stop: the run
checkpoints (unsent metrics included) and exits with status 5 instead of a traceback.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from mlflow.exceptions import MlflowException

from hwm.training.stop import EXIT_TRACKING, StopBoard, StopReason
from hwm.training.stream import unwired

Entry = tuple[int, dict[str, float]]


def _rejected(exc: Exception) -> bool:
    """The server answered and refused these metrics (HTTP 4xx other than 429): retrying cannot help."""
    code = exc.get_http_status_code() if isinstance(exc, MlflowException) else 0
    return 400 <= code < 500 and code != 429


def _stored(logger: Logger, step: int, metrics: Mapping[str, float]) -> bool:
    """Whether the MLflow run already holds ``step`` of one of these metrics (raises while the server is
    down). Other loggers cannot say; their batch is sent again."""
    if not isinstance(logger, MLFlowLogger) or not metrics or logger.run_id is None:
        return False
    key = min(metrics)
    history = logger.experiment.get_metric_history(logger.run_id, key)
    return any(m.step == step for m in history)


class TrackingBuffer(Callback):
    """Sends the agent's metrics to the logger from a background thread, retrying through outages.

    Args:
        give_up_minutes: an outage this long stops the run (checkpoint first; exit status 5).
        retry_seconds: the longest wait between two tries (waits double from one second up to it).
        flush_seconds: at the end of a run, how long to wait for the queue to drain (an outage may end
            meanwhile) before leaving the rest in the last checkpoint.
    """

    def __init__(
        self, *, give_up_minutes: float = 60.0, retry_seconds: float = 30.0, flush_seconds: float = 120.0
    ) -> None:
        if give_up_minutes <= 0 or retry_seconds <= 0 or flush_seconds < 0:
            raise ValueError("tracking.give_up_minutes and retry_seconds must be > 0, flush_seconds >= 0")
        self.give_up_minutes, self.retry_seconds, self.flush_seconds = (
            give_up_minutes,
            retry_seconds,
            flush_seconds,
        )
        self._logger: Logger | None = None
        self._stops: StopBoard = unwired("TrackingBuffer", "the run's stop board")
        self._queue: deque[Entry] = deque()
        self._sending: Entry | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.down_since: float | None = None
        self.gave_up = False
        self.floor = -1  # steps up to here are already in the run (a resume)
        self.sent = 0
        self._unanswered: int | None = None  # a step whose send failed: the server may have stored it

    def attach(self, logger: Logger | None, stops: StopBoard) -> None:
        """The logger the metrics go to (None: a run without one, whose metrics go nowhere), and where a
        server gone for good files its stop."""
        self._logger, self._stops = logger, stops

    def skip_until(self, step: int) -> None:
        """Steps up to ``step`` are already in the run: unsent ones a checkpoint carries are dropped."""
        self.floor = step

    # -- the agent's side -------------------------------------------------------------------------------
    def write(self, metrics: dict[str, float], step: int) -> None:
        if self._logger is None:
            return
        with self._cond:
            self._queue.append((step, dict(metrics)))
            self._cond.notify()
        if self._thread is None:
            self._start()

    @property
    def buffered(self) -> int:
        """Steps written but not yet sent."""
        with self._cond:
            return len(self._queue)  # the step being sent stays first in the queue until it is sent

    @property
    def offline(self) -> bool:
        return self.down_since is not None

    # -- the sending thread -----------------------------------------------------------------------------
    def _start(self) -> None:
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="hwm-tracking", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = first_wait = min(1.0, self.retry_seconds)
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                self._sending = self._queue[0]
            step, metrics = self._sending
            try:
                assert self._logger is not None
                # A server stopped mid-request may have stored a batch whose answer never came: sending
                # it again would log that step twice.
                if step != self._unanswered or not _stored(self._logger, step, metrics):
                    self._logger.log_metrics(metrics, step=step)
                self._unanswered = None
            except Exception as exc:
                if _rejected(exc):
                    rank_zero_warn(f"hwm: the tracking store refused the metrics of step {step}: {exc}")
                else:
                    self._unanswered = step
                    self._failed(exc)
                    with self._cond:
                        self._sending = None
                        if self._closing:  # close() waited already; the rest stays queued
                            return
                        self._cond.wait(timeout=wait)
                    wait = min(wait * 2, self.retry_seconds)
                    continue
            wait = first_wait
            with self._cond:
                self._queue.popleft()
                self._sending = None
                self.sent += 1
                self._cond.notify_all()
            if self.down_since is not None:
                rank_zero_info(
                    f"hwm: tracking server back after {time.monotonic() - self.down_since:.0f} s; "
                    f"sending {self.buffered} buffered steps"
                )
                self.down_since = None

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            detail = " ".join(str(exc).split())[:200]
            rank_zero_warn(
                f"hwm: tracking server unreachable ({type(exc).__name__}: {detail}); training goes on, "
                f"metrics are buffered ({self.buffered} steps) and retried"
            )
        elif now - self.down_since >= self.give_up_minutes * 60:
            self.gave_up = True
            self._stops.request_stop(
                StopReason(
                    EXIT_TRACKING,
                    f"the tracking server has been unreachable for {self.give_up_minutes:g} minutes; "
                    f"{self.buffered} unsent metric steps are kept in the checkpoint and sent on resume",
                )
            )

    def flush(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the queue to drain; True when everything was sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and self._thread is not None and not self.gave_up:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 1.0))
            return not self._queue

    def close(self) -> None:
        """Drains what it can within ``flush_seconds``, then stops the thread (the rest stays queued)."""
        if self._thread is None:
            return
        if not self.flush(self.flush_seconds):  # at once when the server is gone for good
            rank_zero_warn(
                f"hwm: {self.buffered} metric steps could not be sent to the tracking server; the last "
                "checkpoint holds them and a resume sends them"
            )
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        self._thread = None

    # -- Lightning hooks --------------------------------------------------------------------------------
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        with self._cond:
            return {"unsent": [[step, dict(m)] for step, m in self._queue]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        unsent = [(int(step), dict(m)) for step, m in state_dict.get("unsent", []) if int(step) > self.floor]
        with self._cond:
            self._queue.extendleft(reversed(unsent))
        if unsent and self._logger is not None:
            rank_zero_info(f"hwm: sending {len(unsent)} metric steps the checkpoint had not sent yet")
            if self._thread is None:  # a resume with nothing left to train writes nothing new
                self._start()
