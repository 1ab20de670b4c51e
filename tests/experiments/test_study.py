"""Resumable studies: a rerun skips finished runs and continues an interrupted one in its own MLflow run;
`hwm study --status` without Lightning; the SLURM launcher's options and its refusal of a shared SQLite
store (the launcher against a real SLURM: test_study_slurm.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_CONFIG, TINY_EXPERIMENT, cli_env
from hwm.experiments import study as study_mod
from hwm.experiments import study_run
from hwm.experiments.study_folder import SlotRecord, write_record
from hwm.experiments.study_sbatch import SlurmOptionsError, minutes

PROBE = (
    "import sys; from hwm.cli.main import main; code = main(sys.argv[1:]); "
    "print('heavy:', sorted(m for m in ('lightning', 'torchrl', 'torch') if m in sys.modules)); sys.exit(code)"
)


def _status(cwd: Path, study_id: str) -> subprocess.CompletedProcess:
    """`hwm study --status ID` in a fresh interpreter; its last line says whether it imported the training stack."""
    return subprocess.run(
        [sys.executable, "-c", PROBE, "study", "--status", study_id],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,  # seconds on an idle machine; a loaded one is slower by far
    )


def _table(out: str) -> dict[str, list[str]]:
    """The status table's rows by run name: [state, env frames, return, attempts, ...]."""
    rows = {}
    for line in out.splitlines()[3:]:
        if line.startswith("heavy:"):
            break
        name, *cells = line.split()
        rows[name] = cells
    return rows


def test_status_shows_frames_return_and_state_without_lightning(
    tmp_path: Path, mlflow_db_template: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    study = study_mod.build(["--config", str(TINY_CONFIG), "--seeds", "0", "1", "2", "3", "--study-id", "st"])
    study_mod.save_definition(study)
    done, running, failed, never = study.slots()
    bar = "hwm fit:  60%|######    | {}/400 [00:10<00:07, 21frame/s]\r"
    folder = tmp_path / "studies" / "st"
    (folder / f"{done.key}.log").write_text(bar.format(400) + "hwm: run finished: 400 env frames\n")
    (folder / f"{running.key}.log").write_text(bar.format(240))
    (folder / f"{failed.key}.log").write_text(bar.format(200) + "\nhwm fit: error: something broke\n")
    host = socket.gethostname()
    write_record(study, done, SlotRecord(attempts=1, exit=0, host=host, pid=1))
    write_record(study, running, SlotRecord(attempts=2, running=True, host=host, pid=os.getpid()))
    write_record(study, failed, SlotRecord(attempts=1, exit=1, host=host, pid=1))
    proc = _status(tmp_path, "st")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "heavy: []"
    assert "4 runs (1 failed, 1 finished, 1 not started, 1 running)" in proc.stdout
    rows = _table(proc.stdout)
    assert rows["seed=0"][:4] == ["finished", "400/400", "-", "1"]
    assert rows["seed=1"][:4] == ["running", "240/400", "-", "2"]
    assert rows["seed=2"][:2] == ["failed", "(exit"] and "something broke" in proc.stdout
    assert rows["seed=3"][:4] == ["not", "started", "-", "-"]
    # Its process gone without an exit status: interrupted, and said so.
    write_record(study, running, SlotRecord(attempts=2, running=True, host=host, pid=2**22 + 1))
    assert "interrupted (killed: no exit status recorded)" in _status(tmp_path, "st").stdout
    unknown = _status(tmp_path, "nope")
    assert (
        unknown.returncode == 2
        and "no study 'nope' under studies/ (its study.json is missing); known: st" in unknown.stderr
    )


def test_a_rerun_must_define_the_same_study_and_resume_takes_it_from_its_folder(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["--config", str(TINY_CONFIG), "--study-id", "s1"]
    study_mod.save_definition(study_mod.build([*base, "--seeds", "0", "1"]))
    assert study_run.main([*base, "--seeds", "0", "2"]) == 2
    err = capsys.readouterr().err
    assert (
        "study 's1' exists (studies/s1/study.json) with a different seeds; rerun it with `hwm study --resume s1`"
        in err
    )
    assert study_run.main(["--resume", "s1", "--seeds", "3"]) == 2
    assert "--resume takes the study's definition from its folder; drop --seeds" in capsys.readouterr().err
    resumed = study_mod.build(["--resume", "s1", "--jobs", "2"])
    assert resumed.seeds == [0, 1] and resumed.jobs == 2 and resumed.workdir == str(tmp_path)
    keys = [s.key for s in resumed.slots()]
    assert keys == ["01-seed=0", "02-seed=1"]
    assert resumed.fit_args({}, 1, 2)[-4:] == [
        "--checkpoint.dirpath",
        "checkpoints/s1/02-seed=1",
        "--trainer.logger.init_args.tags",
        json.dumps({"hwm.study": "s1", "hwm.study.run": "02-seed=1"}),
    ]


def test_a_rerun_skips_finished_runs_and_continues_an_interrupted_one_from_its_checkpoint(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["--config", str(TINY_CONFIG), "--seeds", "0", "1", "2", "--study-id", "r"]
    study = study_mod.build(base)
    study_mod.save_definition(study)
    done, stopped, fresh = study.slots()
    write_record(study, done, SlotRecord(attempts=1, exit=0))
    write_record(study, stopped, SlotRecord(attempts=1, exit=75))
    # A run folder with a checkpoint (last.ckpt -> the newest), and one an attempt left without any.
    run = tmp_path / "checkpoints" / "r" / stopped.key / "0123abcd"
    run.mkdir(parents=True)
    (run / "update-000000020.ckpt").write_bytes(b"")
    (run / "last.ckpt").symlink_to("update-000000020.ckpt")
    (tmp_path / "checkpoints" / "r" / fresh.key / "fedc3210").mkdir(parents=True)
    assert study_run.main(["--resume", "r", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "[1/3] seed=0: finished earlier"
    assert (
        lines[2].endswith(f"--ckpt_path checkpoints/r/{stopped.key}/0123abcd")
        and "--seed_everything 1" in lines[2]
    )
    assert "--ckpt_path" not in lines[3] and "--seed_everything 2" in lines[3]


def test_the_slurm_launcher_refuses_a_sqlite_store(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert study_run.main(["--config", str(TINY_CONFIG), "--launcher", "slurm", "--study-id", "s"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("hwm study: error: --launcher slurm needs an MLflow tracking server")
        and "\n" not in err
    )
    assert "sqlite:///mlflow.db" in err and "not safe for concurrent writers" in err


def test_sbatch_lines_come_from_the_plan_and_the_command_line(tmp_path: Path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"config: [{TINY_CONFIG}]\nseeds: [0]\nslurm:\n  partition: gpu\n  account: lab\n  time: 2-00:00:00\n"
        "  gpus_per_run: 1\n  cpus_per_run: 8\n  array_limit: 20\n  sbatch: {qos: high, exclusive: true}\n"
        "  setup: [module load cuda]\n"
    )
    study = study_mod.build(["--plan", str(plan), "--sbatch", "constraint=a100", "--time", "12:00:00"])
    params = study.slurm.executor_parameters("hwm-x")
    script = _make_sbatch_string(command="CMD", folder=tmp_path, map_count=260, **params)
    for line in (
        "--partition=gpu",
        "--account=lab",
        "--time=720",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--array=0-259%20",
        "--signal=USR1@300",
        "--requeue",
        "--qos=high",
        "--exclusive",
        "--constraint=a100",
        "--ntasks-per-node=1",
        "--job-name=hwm-x",
    ):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "module load cuda\n" in script
    assert [minutes(t) for t in ("90", "1:30:00", "2-00:00:00", "2-12", "0:30")] == [90, 90, 2880, 3600, 1]
    with pytest.raises(study_mod.StudyError, match="is not a SLURM time"):
        study_mod.build(["--config", "x.yaml", "--time", "soon"])
    with pytest.raises(SlurmOptionsError, match="at most half of --time"):
        study.slurm.updated(type("NS", (), {"signal_seconds": 600, "time": "10"})())


def _wait_for(what: str, ready, timeout: float = 3600):
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return found


@pytest.mark.slow
def test_a_study_killed_in_its_second_run_resumes_it_and_repeats_no_finished_run(
    tmp_path: Path, mlflow_db_template: Path
) -> None:
    from mlflow import MlflowClient

    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    args = [
        "study",
        "--config",
        str(TINY_CONFIG),
        "--seeds",
        "0",
        "1",
        "--study-id",
        "kill",
        "--progress-every",
        "2",
    ]
    # Longer than the tiny preset's 400 frames: a run of 2 s can end before the kill lands.
    args += ["--", "--checkpoint.every_updates", "5", "--data.total_frames", "1600"]
    env = cli_env()
    study = subprocess.Popen(
        [sys.executable, "-m", "hwm.cli", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    second = tmp_path / "checkpoints" / "kill" / "02-seed=1"
    try:
        folder = _wait_for("run 2's first checkpoint", lambda: next(second.glob("*/last.ckpt"), None)).parent
        running = _status(tmp_path, "kill")
    finally:
        # The harshest end: SIGKILL. Its run gets SIGTERM from the kernel (the parent died) and checkpoints.
        study.send_signal(signal.SIGKILL)
        study.communicate(timeout=60)
    rows = _table(running.stdout)
    assert rows["seed=0"][:2] == ["finished", "1600/1600"] and rows["seed=1"][0] == "running", running.stdout
    assert running.stdout.splitlines()[-1] == "heavy: []"

    rerun = subprocess.run(
        [sys.executable, "-m", "hwm.cli", "study", "--resume", "kill"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "[1/2] seed=0: finished earlier" in rerun.stdout
    assert f"[2/2] seed=1: continuing from {folder.relative_to(tmp_path)}" in rerun.stdout
    assert any(line.split()[:2] == ["resumed", "seed=1"] for line in rerun.stdout.splitlines()), rerun.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(TINY_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], run_view_type=3)  # deleted ones too: there are none
    assert sorted((r.data.tags["seed"], r.info.status) for r in runs) == [
        ("0", "FINISHED"),
        ("1", "FINISHED"),
    ]
    resumed = next(r for r in runs if r.data.tags["seed"] == "1")
    assert resumed.info.run_id == folder.name and resumed.data.tags["resumes"] == "1"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "progress/env_frames")]
    assert sorted(steps) == sorted(set(steps)) and max(steps) == 1600
    finished = _status(tmp_path, "kill")
    assert "2 runs (2 finished)" in finished.stdout and _table(finished.stdout)["seed=1"][:2] == [
        "finished",
        "1600/1600",
    ]
