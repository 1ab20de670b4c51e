"""Preemption: a signal makes the run checkpoint after the current update and exit 75; `--ckpt_path last`
then finishes the budget in the same MLflow run. Ctrl-C twice stops at once (130)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY_CONFIG, LoggedRun, WatchedFit, cli_env, describe, fit_and_load, hold_lock
from hwm.checkpoints.preemption import Preemption, signal_number, slurm_job_id
from hwm.checkpoints.validate import job_checkpoint
from hwm.training.stop import EXIT_INTERRUPTED, EXIT_PREEMPTED

EVERY = 10  # updates between periodic checkpoints: the signal comes after the first
BUDGET = 240  # frames: 40 prefill steps, then 20 updates (tiny.yaml's 400 would take 60)


def _start(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> WatchedFit:
    args = ["--config", TINY_CONFIG, "--checkpoint.every_updates", EVERY, *extra]
    return WatchedFit(args, workdir, env)


def _run_dir(workdir: Path) -> Path:
    (run_dir,) = [p for p in (workdir / "checkpoints").iterdir() if p.is_dir()]
    return run_dir


def _steps(run: LoggedRun, key: str) -> list[int]:
    return [m.step for m in run.client.get_metric_history(run.run_id, key)]


def test_sigterm_checkpoints_within_one_update_and_the_resume_finishes_the_run(
    tmp_path: Path,
    mlflow_db_template: Path,
    tiny_run: LoggedRun,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    fit = _start(tmp_path, "--data.total_frames", str(BUDGET))
    fit.wait_for_checkpoint()
    fit.proc.send_signal(signal.SIGTERM)
    status, err = fit.finish(timeout=120)
    assert status == EXIT_PREEMPTED, err[-3000:]
    assert "SIGTERM received" in err and "exit status 75" in err
    after_signal = err[err.index("SIGTERM received") :].splitlines()
    # The stop's own checkpoint and nothing after it (the periodic one the signal followed may report late).
    saved = [line for line in after_signal if line.startswith("hwm: checkpoint ")]
    assert len([line for line in saved if f"update-{EVERY:09d}" not in line]) == 1, err[-3000:]

    run_dir = _run_dir(tmp_path)
    stop = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    # The signal came once update EVERY's checkpoint was on disk; tiny's every update is a clean point, so the
    # stop lands on the update that was running. However late the signal was handled, no update ran after
    # the stop's checkpoint: the last one the run logged is the checkpoint's.
    assert EVERY < stop["hwm"]["updates"]
    frames = int(stop["ReplayDataModule"]["counters"]["env_frames"])
    assert frames < BUDGET
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(stop["hwm"]["run_id"]).info.status == "KILLED"
    logged = client.get_metric_history(stop["hwm"]["run_id"], "progress/updates")
    assert max(m.value for m in logged) <= stop["hwm"]["updates"]

    # While another process holds the run folder, a resume is refused with one line and writes nothing.
    from hwm.cli import main

    holder = hold_lock(run_dir)
    monkeypatch.chdir(tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir())
    # An absolute store: MLflow caches stores by URI, and tiny.yaml's relative one may name another test's.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "fit",
            "--config",
            str(TINY_CONFIG),
            "--ckpt_path",
            "last",
            "--trainer.logger.init_args.tracking_uri",
            uri,
        ]
    )
    refused = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and refused[-1].startswith("hwm fit: error: run folder"), refused
    assert f"is in use by process {holder.pid}" in refused[-1]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir()) == before
    holder.kill()  # dies holding it: the lock file stays, the lock does not
    holder.wait()

    run = fit_and_load(tmp_path, ["--config", str(TINY_CONFIG), "--ckpt_path", "last"])
    assert run.run_id == stop["hwm"]["run_id"]  # the same MLflow run
    assert run.run.info.status == "FINISHED" and run.run.data.tags["resumes"] == "1"
    for key in run.run.data.metrics:
        steps = _steps(run, key)
        assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), f"{key}: steps {steps}"
    assert run.run.data.metrics["progress/env_frames"] == BUDGET
    # No step dropped: the episode in flight when the signal came continued where it stood.
    final = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["ReplayDataModule"]["counters"]["dropped_steps"] == 0
    # Every step an uninterrupted run logs is there: nothing was lost at the cut (tiny_run's budget is
    # longer; up to BUDGET the two log the same steps, and this one evaluates at its end too).
    frames = _steps(tiny_run, "progress/env_frames")
    assert _steps(run, "progress/env_frames") == [s for s in frames if s <= BUDGET]
    assert _steps(run, "eval/return") == [s for s in _steps(tiny_run, "eval/return") if s < BUDGET] + [BUDGET]


def test_one_ctrl_c_checkpoints_and_exits_75(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    fit = _start(tmp_path, "--data.total_frames", str(BUDGET))
    fit.wait_for_checkpoint()
    fit.proc.send_signal(signal.SIGINT)
    status, err = fit.finish(timeout=120)
    assert status == EXIT_PREEMPTED, err[-3000:]
    assert "SIGINT received: checkpointing after this update" in err and "Traceback" not in err
    stop = torch.load(_run_dir(tmp_path) / "last.ckpt", map_location="cpu", weights_only=False)
    assert stop["hwm"]["updates"] > EVERY  # the stop's own checkpoint, newer than the periodic one
    assert f"continue with: hwm fit --ckpt_path {_run_dir(tmp_path).relative_to(tmp_path)}" in err
    assert "exit status 75" in err


@pytest.mark.slow
@pytest.mark.covers_alone
def test_second_ctrl_c_stops_at_once(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    fit = _start(tmp_path)
    fit.wait_for_checkpoint()
    fit.proc.send_signal(signal.SIGINT)
    _, line = fit.output.wait_for("SIGINT received", timeout=120)
    assert "Ctrl-C again stops at once" in line.string
    fit.proc.send_signal(signal.SIGINT)
    status, err = fit.finish(timeout=120)
    assert status == EXIT_INTERRUPTED, err[-3000:]
    assert "stopped at once (second Ctrl-C)" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.covers_alone
def test_sigusr1_under_slurm_requeues_and_the_requeued_job_resumes_itself(
    tmp_path: Path, mlflow_db_template: Path
) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A fake `scontrol` first on PATH: it records the requeue instead of asking a SLURM controller.
    fake_scontrol = bin_dir / "scontrol"
    fake_scontrol.write_text(
        f'#!/bin/sh\n# fake scontrol (hwm tests): records its arguments\necho "$@" >> {tmp_path / "scontrol.log"}\n'
    )
    fake_scontrol.chmod(0o755)
    env = cli_env()
    env.update(SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_JOB_NAME="hwm-test", SLURM_PROCID="0")
    env.update(
        SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost", PATH=f"{bin_dir}:{env['PATH']}"
    )

    fit = _start(tmp_path, env=env)
    fit.wait_for_checkpoint()
    fit.proc.send_signal(signal.SIGUSR1)
    status, err = fit.finish(timeout=120)
    assert status == EXIT_PREEMPTED, err[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]

    # SLURM runs the same script again: no --ckpt_path, the job finds its own run.
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "hwm.cli",
            "fit",
            "--config",
            str(TINY_CONFIG),
            "--checkpoint.every_updates",
            "10",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, describe(again)
    assert "SLURM job 4242 was requeued: continuing its run" in again.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("hwm-tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["resumes"] == "1"
    assert run.data.metrics["progress/env_frames"] == 400


def test_requeued_job_finds_only_its_own_run(tmp_path: Path) -> None:
    import json

    for run, job in (("a", "7"), ("b", "8")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "update-000000001.ckpt").write_bytes(b"")
        (tmp_path / run / "update-000000001.json").write_text(json.dumps({"slurm_job": job}))
        os.symlink("update-000000001.ckpt", tmp_path / run / "last.ckpt")
    assert job_checkpoint(tmp_path, "7") == tmp_path / "a" / "last.ckpt"
    assert job_checkpoint(tmp_path, "9") is None


def test_signal_names_and_slurm_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    assert signal_number("SIGUSR2") == signal_number("usr2") == signal_number(str(int(signal.SIGUSR2)))
    with pytest.raises(ValueError, match="'SIGNOPE' is not a signal name"):
        Preemption(signals=["SIGNOPE"])
    with pytest.raises(ValueError, match="cannot be caught"):
        Preemption(signals=["SIGKILL"])
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "11")
    assert slurm_job_id() == "11"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "10_3"
