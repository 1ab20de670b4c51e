"""The frame progress bar: opens with the first batch, lets log lines through above it, ends on the final
evaluation."""

from __future__ import annotations

import io
import logging
import sys
from contextlib import redirect_stderr, redirect_stdout

from lightning.pytorch.utilities import rank_zero_info

from fakes import FakeAgentProgress, FakeStream, FakeTrackingStatus
from hwm.training.progress import LIGHTNING_LOG, FrameProgressBar


def test_the_bar_opens_late_lets_log_lines_through_and_ends_on_the_final_evaluation() -> None:
    stream, agent = FakeStream(total_frames=400), FakeAgentProgress()
    bar = FrameProgressBar()
    bar.attach(stream, agent, FakeTrackingStatus())
    lightning_log = logging.getLogger(LIGHTNING_LOG)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        # As `hwm fit` has it: Lightning's own console handler (pytest's log capture may have kept it away).
        console = logging.StreamHandler(sys.stderr)
        lightning_log.addHandler(console)
        handlers = list(lightning_log.handlers)
        bar.on_train_start(None, None)  # type: ignore[arg-type]
        bar.on_train_epoch_start(None, None)  # type: ignore[arg-type]
        assert out.getvalue() == ""  # nothing drawn during the prefill
        stream.counters["env_frames"], agent.updates = 200, 3
        agent.bar_metrics = {"eval/return": 79.6}
        bar.on_train_batch_end(None, None, None, None, 0)  # type: ignore[arg-type]
        assert "200/400" in out.getvalue() and "eval=79.6" in out.getvalue()
        # A log line while the bar is shown goes through tqdm.write (the bar is cleared and redrawn).
        assert lightning_log.handlers != handlers
        rank_zero_info("hwm: checkpoint x.ckpt")
        stream.counters["env_frames"] = 400
        agent.bar_metrics = {"eval/return": 50.1}  # the final evaluation, logged after the last batch
        bar.on_train_end(None, None)  # type: ignore[arg-type]
        assert lightning_log.handlers == handlers  # restored
        lightning_log.removeHandler(console)
    assert out.getvalue().rstrip().endswith("eval=50.1]") and "400/400" in out.getvalue()
    logged = err.getvalue() + out.getvalue()
    assert "hwm: checkpoint x.ckpt\n" in logged and "eval=79.6]hwm: checkpoint" not in logged
