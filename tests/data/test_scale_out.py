"""Several envs per process (data.num_envs) and evaluation episodes run together (data.eval_envs)."""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs.utils import ExplorationType

from conftest import TINY_CONFIG, fit_and_load
from hwm.data.evaluation import Evaluator
from hwm.envs.common import probe_env
from hwm.envs.suites import EnvConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "checkpoints"))
from test_resume import _data_state, _load, _run_dir, assert_same_training, straight_and_split  # noqa: E402


class FixedPolicy(TensorDictModuleBase):
    """A deterministic policy of the observation alone: evaluation returns then depend on the env only."""

    eval_exploration = ExplorationType.DETERMINISTIC

    def __init__(self) -> None:
        super().__init__()
        self.in_keys, self.out_keys = ["observation"], ["action"]

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        # Elementwise only: a batched matrix product may round differently from an unbatched one.
        obs = td.get("observation")
        return td.set("action", torch.tanh(3.0 * obs[..., :1] - obs[..., 2:3] + 0.5 * obs[..., 4:5]))


@pytest.mark.parametrize("parallel", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_evaluation_together_returns_what_one_at_a_time_returns(parallel: bool) -> None:
    config = EnvConfig("dmc", "cartpole-swingup", False, 64, 4, 120)
    policy = FixedPolicy()
    runs = {}
    for envs in (1, 3):  # 5 episodes: 3 together, then 2 (one env idle)
        evaluator = Evaluator(
            config, probe_env(config.make(0), "observation"), episodes=5, every=0, video_every=0, seed=7,
            envs=envs, parallel=parallel,
        )  # fmt: skip
        metrics, _ = evaluator.run(policy, functools.partial(EnvConfig.make, config), 0.0, 3)
        evaluator.close()
        runs[envs] = (metrics["eval/return"], metrics["eval/return_std"])
    assert runs[1] == runs[3]
    assert runs[1][1] > 0  # each episode its own seed: different episodes


NUM_ENVS = ["--data.num_envs", "2", "--data.parallel_envs", "false"]


def test_two_envs_count_frames_and_resume_mid_episode_exactly(
    tmp_path: Path, mlflow_db_template: Path
) -> None:
    args = [
        "--config",
        str(TINY_CONFIG),
        *NUM_ENVS,
        "--data.eval_every",
        "200",
        "--checkpoint.every_updates",
        "0",
    ]
    a, half, b, _ = straight_and_split(tmp_path, mlflow_db_template, args, 200, 400)
    data = _data_state(a)
    # 400 frames = 100 agent steps, 50 per env; 40 prefill steps; one update per agent step after them.
    assert data["counters"]["env_frames"] == 400 and data["counters"]["agent_steps"] == 100
    assert a["hwm"]["updates"] == 60
    # Each env's lane: its 50 steps plus the reset observation of each of its 3 episodes (20 steps each).
    assert [lane["write_count"] for lane in data["replay"]["lanes"]] == [53, 53]
    assert {c["file"].split("/")[1] for c in data["replay"]["chunks"]} == {"env0", "env1"}
    assert _data_state(half)["in_flight_steps"] == [5, 5]  # 25 steps each: mid-episode
    assert_same_training(a, b, tmp_path)
    for lane_a, lane_b in zip(data["replay"]["lanes"], _data_state(b)["replay"]["lanes"], strict=True):
        assert lane_a["write_count"] == lane_b["write_count"]


@pytest.mark.slow
def test_four_parallel_pixel_envs(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    args = ["--config", str(TINY_CONFIG), "--data.num_envs", "4", "--data.from_pixels", "true"]
    args += ["--data.eval_envs", "2", "--data.eval_episodes", "3", "--checkpoint.every_updates", "0"]
    fit_and_load(tmp_path, args, timeout=600)
    data = _data_state(_load(_run_dir(tmp_path) / "last.ckpt"))
    assert data["counters"]["env_frames"] == 400
    # 25 steps per env: one finished episode of 20 steps and 5 of the next, plus their reset observations.
    assert [lane["write_count"] for lane in data["replay"]["lanes"]] == [27] * 4


@pytest.mark.slow
def test_ddp_times_two_envs(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    fit_and_load(tmp_path, ["--config", str(TINY_CONFIG), *ddp, *NUM_ENVS], timeout=600)
    checkpoint = _load(_run_dir(tmp_path) / "last.ckpt")
    data = _data_state(checkpoint)
    # 2 processes x 2 envs: 100 agent steps in all, 25 per env; 30 updates of 2 batches each.
    assert data["counters"]["env_frames"] == 400 and checkpoint["hwm"]["updates"] == 30
    assert [[lane["write_count"] for lane in r["replay"]["lanes"]] for r in data["ranks"]] == [[27, 27]] * 2
