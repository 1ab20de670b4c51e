"""What a user sees when a run is stopped: one Ctrl-C ends it at a checkpoint with its metrics sent and one
way to continue; a Ctrl-C before training started is one line."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwm.cli.summary import Evaluations, RunSummary, Score
from hwm.training.stop import EXIT_INTERRUPTED, EXIT_PREEMPTED


def test_one_ctrl_c_stops_at_a_checkpoint_with_its_metrics_sent_and_one_way_to_continue(
    tmp_path: Path, tiny_config: Path, mlflow_db_template: Path, hwm_env: dict[str, str]
) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    # Metrics are logged at episode ends only (log_every past the run): the step in hand when the run stops
    # is the only record of everything since the last episode ended.
    args = ["--config", tiny_config, "--checkpoint.every_updates", "5", "--model.log_every", "1000"]
    args += ["--data.total_frames", "400", "--data.eval_every", "0", "--trainer.enable_progress_bar", "false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwm.cli", "fit", *map(str, args)],
        cwd=tmp_path,
        env=hwm_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    while not (line := proc.stderr.readline()).startswith("hwm: checkpoint "):
        assert line, "the run ended before its first checkpoint:\n" + "".join(seen)
        seen.append(line)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Traceback" not in err and "run finished" not in err
    assert "hwm: run stopped: " in err, err[-3000:]
    # The stop line and the summary give the same command, without a new budget (the run has its own).
    (stop,) = re.findall(r"continue with: (hwm fit .*?) \(exit status 75\)", err)
    (summary,) = re.findall(r"^  continue +(hwm fit .*)$", err, re.MULTILINE)
    assert stop == summary and "--data.total_frames" not in summary
    assert re.search(r"^  evaluation +none yet: the first is due at the end of the run", err, re.MULTILINE)
    assert "hwm compare" not in err  # nothing to compare before an evaluation

    (run_dir,) = [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]
    stopped = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    unwritten = stopped["unlogged_metrics"]
    assert unwritten["metrics"], "the checkpoint should hold the step in hand"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(stopped["hwm"]["run_id"])
    assert run.info.status == "KILLED"
    frames = [m.step for m in client.get_metric_history(run.info.run_id, "progress/env_frames")]
    assert frames[-1] == unwritten["step"], f"the stop did not send its last step: {frames}"


def test_the_summary_of_a_finished_run_asks_for_a_budget_and_offers_a_comparison(tmp_path: Path) -> None:
    score = Score("eval/return", 50.0, 80.0, 2)
    common = dict(run_id="abc", experiment="hwm-tiny", tracking_uri="sqlite:///mlflow.db", frames=400)
    finished = RunSummary(**common, updates=60, scores=[score], checkpoint=Path("checkpoints/abc/last.ckpt"))
    lines = "\n".join(finished.lines())
    assert lines.startswith("hwm: run finished: 400 env frames, 60 updates")
    assert "hwm fit --ckpt_path checkpoints/abc --data.total_frames N" in lines
    assert "hwm compare --experiment hwm-tiny --tracking-uri sqlite:///mlflow.db" in lines
    unevaluated = RunSummary(
        **common, updates=60, scores=[], checkpoint=None, evaluations=Evaluations(episodes=0, every=0)
    )
    assert "  evaluation   off (data.eval_episodes: 0)" in unevaluated.lines()
    early = RunSummary(
        **common, updates=9, scores=[], checkpoint=None, stopped=True, evaluations=Evaluations(5, 10_000)
    )
    assert early.lines()[0] == "hwm: run stopped: 400 env frames, 9 updates"
    assert (
        "  evaluation   none yet: the first is due at 10000 env frames (data.eval_every); this run "
        "stopped at 400" in early.lines()
    )


# A Ctrl-C (KeyboardInterrupt) put where the run is at: checking the command line before Lightning is imported,
# or inside Lightning's fit while the envs are built, before hwm's own signal handling is in place.
INTERRUPT = {
    "start": "import hwm.cli.preflight as at; at.check_config_files = stop",
    "setup": "from hwm.data.datamodule import ReplayDataModule as at; at.setup = stop",
}


@pytest.mark.parametrize("where", sorted(INTERRUPT))
def test_a_ctrl_c_before_training_is_one_line(
    where: str, tmp_path: Path, tiny_config: Path, hwm_env: dict[str, str]
) -> None:
    code = (
        "import sys\ndef stop(*args, **kwargs):\n    raise KeyboardInterrupt\n"
        f"{INTERRUPT[where]}\nfrom hwm.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "fit", "--config", str(tiny_config)],
        cwd=tmp_path,
        env=hwm_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-3000:]
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "hwm fit: interrupted before training started; nothing to save"
    )
    assert "Traceback" not in proc.stderr
