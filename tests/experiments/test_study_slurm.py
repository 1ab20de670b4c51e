"""`hwm study --launcher slurm` against a real single-node SLURM (tests/slurm_cluster.py) and a real MLflow
server: an array runs to completion and `hwm compare` reads it, a task requeued mid-run continues its run
with no step repeated or dropped, and a cancelled study is resumed. Minutes each: marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_CONFIG, TINY_EXPERIMENT, cli_env

pytestmark = pytest.mark.slow

# The tiny preset's 400 frames (160 of them random prefill), a checkpoint every 5 updates (20 frames): a run
# interrupted past 240 frames has one to continue from. Minutes on an idle 2-core machine; far longer when
# the CPU is shared, hence the long timeouts below (they only matter when something hangs).
FIT = ["--", "--data.total_frames", "400", "--checkpoint.every_updates", "5"]
TIMEOUT = 3600


@pytest.fixture
def start_study(slurm_cluster):
    """``start_study(cwd, *args)``: `hwm study ARGS` in the background against the test cluster (killed at the
    end of the test if still running)."""
    started: list[subprocess.Popen] = []

    def start(cwd: Path, *args: str) -> subprocess.Popen:
        env = {**cli_env(), **slurm_cluster.env}
        cmd = [sys.executable, "-m", "hwm.cli", "study", *args]
        started.append(
            subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _hwm(cluster, cwd: Path, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = {**cli_env(), **cluster.env}
    return subprocess.run(
        [sys.executable, "-m", "hwm.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _until(what: str, ready, timeout: float = TIMEOUT, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        found = ready()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _checkpointed_past(cwd: Path, study_id: str, key: str, frames: int) -> Path | None:
    """The run folder of run ``key`` once its last checkpoint is past ``frames`` env frames."""
    for link in (cwd / "checkpoints" / study_id / key).glob("*/last.ckpt"):
        try:
            sidecar = json.loads(link.resolve(strict=True).with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        if sidecar["env_frames"] >= frames:
            return link.parent
    return None


def _runs(server: str, study_id: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(server)
    exp = client.get_experiment_by_name(TINY_EXPERIMENT)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`hwm.study` = '{study_id}'")


def _steps(server: str, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    history = MlflowClient(server).get_metric_history(run_id, "progress/env_frames")
    return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


def _submitted_job(out: str) -> str:
    line = next(line for line in out.splitlines() if "submitted SLURM job" in line)
    return line.split("submitted SLURM job ")[1].split(":")[0]


def _expedite(cluster, task: str) -> None:
    """A requeued job waits two minutes before it may start again (SLURM's BeginTime); the test doesn't."""
    _until(
        f"{task} back in the queue",
        lambda: cluster.queue(task.split("_")[0]).get(task, ("",))[0] == "PENDING",
    )
    cluster.run("scontrol", "update", f"JobId={task}", "StartTime=now")


def test_an_array_task_requeued_mid_run_continues_its_run_and_compare_reads_the_study(
    slurm_cluster, mlflow_server_uri: str, tmp_path: Path, start_study
) -> None:
    study_id = "slurm-array"
    args = ["--config", str(TINY_CONFIG), "--seeds", "0", "1", "--study-id", study_id, "--launcher", "slurm"]
    args += [
        "--tracking-uri",
        mlflow_server_uri,
        "--cpus-per-run",
        "1",
        "--time",
        "30",
        "--signal-seconds",
        "60",
    ]
    args += ["--sbatch", "comment=hwm-test", "--progress-every", "10", "--wait", *FIT]
    study = start_study(tmp_path, *args)
    first = _until(
        "run 1 to checkpoint mid-run", lambda: _checkpointed_past(tmp_path, study_id, "01-seed=0", 240)
    )
    records = tmp_path / "studies" / study_id / "runs"
    task = json.loads((records / "01-seed=0.json").read_text())["slurm_job"]
    slurm_cluster.run("scontrol", "requeue", task)
    _expedite(slurm_cluster, task)
    out, _ = study.communicate(timeout=TIMEOUT)
    assert study.returncode == 0, out + slurm_cluster.logs()
    print(out)  # the record of the run, for docs/cluster.md
    lines = out.splitlines()
    assert any(
        line.split() == ["resumed", "seed=0", "(log:", f"studies/{study_id}/01-seed=0.log)"] for line in lines
    )
    assert any(line.split()[:2] == ["finished", "seed=1"] for line in lines), out

    # The sbatch script: one array, hwm's requeue signal, the extra line of the plan / command line.
    script = next((tmp_path / "studies" / study_id / "slurm").rglob("*submission.sh")).read_text()
    for expected in (
        "#SBATCH --array=0-1%2",
        "#SBATCH --signal=USR1@60",
        "#SBATCH --requeue",
        "#SBATCH --comment=hwm-test",
    ):
        assert expected in script, script

    # One FINISHED MLflow run per seed; the requeued task continued its own run (the folder it checkpointed).
    runs = {r.data.tags["hwm.study.run"]: r for r in _runs(mlflow_server_uri, study_id)}
    assert sorted(runs) == ["01-seed=0", "02-seed=1"] and {r.info.status for r in runs.values()} == {
        "FINISHED"
    }
    requeued, straight = runs["01-seed=0"], runs["02-seed=1"]
    assert requeued.info.run_id == first.name and requeued.data.tags["resumes"] == "1"
    assert json.loads((records / "01-seed=0.json").read_text())["attempts"] == 2
    log = (tmp_path / "studies" / study_id / "01-seed=0.log").read_text()
    assert "SIGTERM received" in log and f"continuing {first.relative_to(tmp_path)}" in log
    # No step repeated or dropped: the same steps as the run nobody interrupted, each once, in order.
    steps = _steps(mlflow_server_uri, requeued.info.run_id)
    assert steps == sorted(set(steps)) and steps == _steps(mlflow_server_uri, straight.info.run_id)
    assert steps[-1] == 400

    compare = _hwm(
        slurm_cluster,
        tmp_path,
        "compare",
        "--experiment",
        TINY_EXPERIMENT,
        "--tracking-uri",
        mlflow_server_uri,
        "--study",
        study_id,
        "--group-by",
        "tags.hwm.study",
        "--out",
        str(tmp_path / "cmp"),
    )
    assert compare.returncode == 0, compare.stderr
    assert f"{TINY_EXPERIMENT}: 2 runs with eval/return" in compare.stdout
    status = _hwm(slurm_cluster, tmp_path, "study", "--status", study_id)
    assert status.returncode == 0 and "2 runs (2 finished)" in status.stdout, status.stdout + status.stderr


def test_a_cancelled_study_is_resumed_where_it_stopped(
    slurm_cluster, mlflow_server_uri: str, tmp_path: Path, start_study
) -> None:
    study_id = "slurm-cancel"
    args = ["--config", str(TINY_CONFIG), "--seeds", "0", "1", "--study-id", study_id, "--launcher", "slurm"]
    args += ["--tracking-uri", mlflow_server_uri, "--cpus-per-run", "1", "--array-limit", "1", *FIT]
    submitted = start_study(tmp_path, *args)
    out, _ = submitted.communicate(timeout=TIMEOUT)
    assert submitted.returncode == 0, out
    job = _submitted_job(out)
    first = _until(
        "run 1 to checkpoint mid-run", lambda: _checkpointed_past(tmp_path, study_id, "01-seed=0", 240)
    )
    slurm_cluster.run("scancel", job)
    _until("the array to leave the queue", lambda: not slurm_cluster.queue(job))
    status = _hwm(slurm_cluster, tmp_path, "study", "--status", study_id)
    print(status.stdout)
    rows = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[3:]}
    assert rows == {"seed=0": "interrupted", "seed=1": "not"}, status.stdout  # "not started": it was pending

    resumed = start_study(tmp_path, "--resume", study_id, "--wait", "--progress-every", "10")
    out, _ = resumed.communicate(timeout=TIMEOUT)
    print(out)
    assert resumed.returncode == 0, out + slurm_cluster.logs()
    assert any(line.split()[:2] == ["resumed", "seed=0"] for line in out.splitlines()), out
    runs = {r.data.tags["hwm.study.run"]: r for r in _runs(mlflow_server_uri, study_id)}
    assert sorted(runs) == ["01-seed=0", "02-seed=1"] and {r.info.status for r in runs.values()} == {
        "FINISHED"
    }
    assert runs["01-seed=0"].info.run_id == first.name
    steps = _steps(mlflow_server_uri, first.name)
    assert steps == sorted(set(steps)) and steps == _steps(mlflow_server_uri, runs["02-seed=1"].info.run_id)
