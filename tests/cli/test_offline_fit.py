"""`hwm fit --data.dataset`: a world model trained alone on a saved dataset, held-out errors logged, resumed
exactly; a dataset from an online run's archived replay; one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import run_hwm

OFFLINE_TINY = Path(__file__).resolve().parents[2] / "conf" / "offline_tiny.yaml"
EXPERIMENT = "hwm-offline-tiny"
HELDOUT = ("heldout/reward_mse", "heldout/reward_mse_top10", "heldout/obs_mse", "heldout/kl")


def _fit(workdir: Path, *args: object):
    proc = run_hwm(["fit", "--config", OFFLINE_TINY, *args], cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _run(workdir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return client, run


def _history(client, run, key: str) -> list[tuple[int, float]]:
    return [
        (m.step, m.value)
        for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    ]


def _weights(workdir: Path, updates: int) -> dict[str, torch.Tensor]:
    (path,) = (workdir / "checkpoints").glob(f"*/update-{updates:09d}.ckpt")
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture
def workdirs(tmp_path: Path, mlflow_db_template: Path) -> tuple[Path, Path]:
    dirs = (tmp_path / "straight", tmp_path / "resumed")
    for d in dirs:
        d.mkdir()
        shutil.copyfile(mlflow_db_template, d / "mlflow.db")
    return dirs


def test_offline_fit_logs_heldout_errors_and_resumes_exactly(episode_dataset: Path, workdirs) -> None:
    straight, resumed = workdirs
    proc = _fit(
        straight,
        "--data.dataset",
        episode_dataset,
        "--data.total_updates",
        "12",
        "--data.eval_every",
        "4",
    )
    assert "run finished: 12 updates of a world model on 8 episodes (2 held out)" in proc.stderr
    assert "held out     reward MSE" in proc.stderr and "--data.total_updates N" in proc.stderr
    client, run = _run(straight)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kind"] == "world_model" and run.data.tags["harmonizer_mode"] == "rectified"
    assert run.data.params["data.heldout_episodes"] == "2"
    for key in HELDOUT:
        history = _history(client, run, key)
        assert [s for s, _ in history] == [0, 4, 8, 12], (key, history)  # before, every 4, after the last
        assert all(v >= 0 for _, v in history)
    assert [s for s, _ in _history(client, run, "loss/reward")] == list(range(1, 13))
    assert [v for _, v in _history(client, run, "progress/updates")] == list(range(0, 13))
    assert _history(client, run, "dataset/train_episodes") == [(0, 8.0)]
    weights = [v for _, v in _history(client, run, "harmonizer/weight_reward")]
    assert weights[0] == pytest.approx(1.0) and weights[-1] != weights[0]
    # The same run in two parts: 6 updates, then resumed from its run folder up to 12.
    _fit(
        resumed,
        "--data.dataset",
        episode_dataset,
        "--data.total_updates",
        "6.0",  # budgets written as floats, as online
        "--data.eval_every",
        "4",
    )
    (run_dir,) = (resumed / "checkpoints").iterdir()
    proc = run_hwm(["fit", "--ckpt_path", run_dir, "--data.total_updates", "1.2e1"], cwd=resumed)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming MLflow run" in proc.stderr
    a, b = _weights(straight, 12), _weights(resumed, 12)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise: RNG, optimizer, data
    client, run = _run(resumed)
    assert [s for s, _ in _history(client, run, "heldout/reward_mse")] == [0, 4, 6, 8, 12]
    assert (
        _history(client, run, "heldout/reward_mse")[-1] == _history(*_run(straight), "heldout/reward_mse")[-1]
    )


def test_offline_resume_refuses_other_heldout_episodes(episode_dataset: Path, workdirs) -> None:
    workdir, _ = workdirs
    _fit(workdir, "--data.dataset", episode_dataset, "--data.total_updates", "2")
    (run_dir,) = (workdir / "checkpoints").iterdir()
    proc = run_hwm(["fit", "--ckpt_path", run_dir, "--data.heldout_episodes", "3"], cwd=workdir)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "data.heldout_episodes" in lines[-1] and "start a new run" in lines[-1], proc.stderr


def test_offline_fit_on_an_online_runs_archived_replay(tiny_run, tmp_path: Path) -> None:
    (run_dir,) = (tiny_run.workdir / "checkpoints").iterdir()  # conf/tiny.yaml's run: 5 episodes of 21 rows
    proc = _fit(
        tmp_path,
        "--data.dataset",
        run_dir,
        "--data.heldout_episodes",
        "1",
        "--data.total_updates",
        "3",
    )
    assert "3 updates of a world model on 4 episodes (1 held out)" in proc.stderr


def test_offline_bad_dataset_is_one_line(tmp_path: Path) -> None:
    proc = run_hwm(["fit", "--config", OFFLINE_TINY, "--data.dataset", tmp_path / "nowhere"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hwm fit: error: dataset folder {str(tmp_path / 'nowhere')!r} does not exist"
    ], proc.stderr
