"""An `mlflow server` stopped for a while and restarted during a fit: training goes on, nothing is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import TINY_CONFIG, TINY_EXPERIMENT, LoggedRun, MlflowServer, WatchedFit, cli_env


@pytest.mark.slow
@pytest.mark.covers_alone
def test_server_down_for_a_while_loses_no_metric(mlflow_server: MlflowServer, tiny_run: LoggedRun) -> None:
    server = mlflow_server
    workdir = server.workdir.parent / "fit"
    workdir.mkdir()
    args = ["--config", TINY_CONFIG, "--trainer.logger.init_args.tracking_uri", server.base]
    args += ["--checkpoint.every_updates", "10", "--tracking.retry_seconds", "1"]
    env = cli_env()
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    fit = WatchedFit(args, workdir, env)
    try:
        fit.wait_for_checkpoint()
        server.stop()
        down, _ = fit.output.wait_for("tracking server unreachable", timeout=120)
        fit.output.wait_for(r"hwm: checkpoint \S+ \(", timeout=240, after=down)  # training goes on meanwhile
        assert fit.proc.poll() is None, "the run stopped with the server"
        server.start()
        status, err = fit.finish(timeout=300)
    finally:
        fit.kill()
    assert status == 0, err[-4000:]
    assert "tracking server back" in err

    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.base)
    (run,) = client.search_runs([client.get_experiment_by_name(TINY_EXPERIMENT).experiment_id])
    for key in ("progress/env_frames", "progress/updates", "loss/obs", "eval/return"):
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        want = [(m.step, m.value) for m in tiny_run.client.get_metric_history(tiny_run.run_id, key)]
        assert [s for s, _ in got] == [s for s, _ in want], key  # every step, in order
    assert run.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.covers_alone
def test_server_gone_for_good_ends_the_run_with_a_checkpoint_and_the_resume_sends_the_rest(
    mlflow_server: MlflowServer, tiny_run: LoggedRun
) -> None:
    server = mlflow_server
    workdir = server.workdir.parent / "fit"
    workdir.mkdir()
    budget = 800  # long enough to outlast the 6 s the run waits for the server
    args = ["--config", TINY_CONFIG, "--trainer.logger.init_args.tracking_uri", server.base]
    args += ["--checkpoint.every_updates", "10", "--data.total_frames", str(budget)]
    args += ["--tracking.retry_seconds", "1", "--tracking.give_up_minutes", "0.1"]
    env = cli_env()
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    fit = WatchedFit(args, workdir, env)
    try:
        fit.wait_for_checkpoint()
        server.stop()
        status, err = fit.finish(timeout=300)
    finally:
        fit.kill()
    assert status == 5, err[-4000:]
    assert "Traceback" not in err
    assert "unreachable for 0.1 minutes" in err and "continue with: hwm fit --ckpt_path" in err

    server.start()
    try:
        resume = subprocess.run(
            [sys.executable, "-m", "hwm.cli", "fit", "--config", str(TINY_CONFIG), "--ckpt_path", "last"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert resume.returncode == 0, resume.stderr[-4000:]
        assert "metric steps the checkpoint had not sent yet" in resume.stderr
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.base)
        (run,) = client.search_runs([client.get_experiment_by_name(TINY_EXPERIMENT).experiment_id])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "progress/env_frames")]
        straight = [
            m.step for m in tiny_run.client.get_metric_history(tiny_run.run_id, "progress/env_frames")
        ]
        # The straight run's steps up to its budget, then every collect to this one's: none missing.
        assert steps == straight + list(range(straight[-1] + 4, budget + 1, 4))
        assert run.info.status == "FINISHED"
    finally:
        server.stop()
