"""Several envs per process (data.num_envs) and evaluation episodes run together (data.eval_envs)."""

from __future__ import annotations

import functools
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs.utils import ExplorationType

from helpers import (
    TINY_CONFIG,
    assert_same_training,
    data_state,
    fit_and_load,
    load_checkpoint,
    run_folder,
    straight_and_split,
)
from hwm.agent import HarmonyDreamAgent
from hwm.data.datamodule import ReplayDataModule
from hwm.data.evaluation import Evaluator
from hwm.envs.common import probe_env
from hwm.envs.suites import EnvConfig
from hwm.models.actor_critic import ActorCritic
from hwm.models.world_model import WorldModel

TINY_WM = dict(deter=16, hidden=16, stoch=4, classes=4, cnn_depth=4, mlp_units=32, mlp_layers=1)
TINY_AC = dict(units=32, layers=1, horizon=3)


class FakeFixedPolicy(TensorDictModuleBase):
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
    policy = FakeFixedPolicy()
    runs = {}
    for envs in (1, 3):  # 5 episodes: 3 together, then 2 (one env idle)
        evaluator = Evaluator(
            config,
            probe_env(config.make(0), "observation"),
            episodes=5,
            every=0,
            video_every=0,
            seed=7,
            envs=envs,
            parallel=parallel,
        )
        metrics, _ = evaluator.run(policy, functools.partial(EnvConfig.make, config), 0.0, 3)
        evaluator.close()
        runs[envs] = (metrics["eval/return"], metrics["eval/return_std"])
    assert runs[1] == runs[3]
    assert runs[1][1] > 0  # each episode its own seed: different episodes


NUM_ENVS = ["--data.num_envs", "2", "--data.parallel_envs", "false"]


def _stream(tmp_path: Path, name: str, total_frames: int, parallel: bool) -> ReplayDataModule:
    """Two cartpole envs (episodes of 20 steps; in worker processes if ``parallel``), a tiny untrained
    policy, one batch per agent step (windows of the episodes in flight too)."""
    dm = ReplayDataModule(
        task="cartpole-balance",
        time_limit=40,
        action_repeat=2,
        total_frames=total_frames,
        prefill_frames=20,
        batch_size=2,
        seq_len=4,
        train_ratio=8.0,
        capacity=1000,
        eval_every=0,
        eval_episodes=0,
        ongoing=True,
        num_envs=2,
        parallel_envs=parallel,
    )
    torch.manual_seed(0)
    agent = HarmonyDreamAgent(
        dm.env_info, world_model=partial(WorldModel, **TINY_WM), actor_critic=partial(ActorCritic, **TINY_AC)
    )
    dm.attach_policy(agent.policy())
    dm.use_replay_dir(tmp_path / name)
    return dm


# parallel: worker-process envs (TorchRL ParallelEnv), the default for several envs; their simulator states
# travel from the workers into the checkpoint and back. Serial envs by default; through worker processes the
# batches after a resume differ from the straight run's (found by this test, not fixed yet): slow, expected
# to fail until it is.
@pytest.mark.parametrize(
    "parallel",
    [
        pytest.param(
            True,
            marks=[
                pytest.mark.slow,
                pytest.mark.covers_alone,
                pytest.mark.xfail(reason="a resume through worker-process envs does not continue exactly"),
            ],
            id="worker_processes",
        ),
        pytest.param(False, id="serial"),
    ],
)
def test_two_envs_stream_counts_every_env_and_continues_exactly(
    tmp_path: Path, one_torch_thread_seeded: None, parallel: bool
) -> None:
    straight = _stream(tmp_path, "straight", 120, parallel)
    expected = list(straight.batches())
    # 120 frames = 60 agent steps, 30 per env; 10 prefill steps, then one batch per agent step.
    assert straight.counters["env_frames"] == 120 and straight.counters["agent_steps"] == 60
    assert len(expected) == 50 and straight.steps_per_collect == 2
    # Each env's lane: its 30 steps plus the reset observation of each of its 2 episodes.
    assert [int(b.write_count) for b in straight.replay.buffers] == [32, 32]
    assert straight.counters["episodes"] == 2  # one finished episode per env

    half = _stream(tmp_path, "split", 60, parallel)  # 15 steps per env: mid-episode
    assert len(list(half.batches())) == 20
    state = half.state_dict()
    assert state["in_flight_steps"] == [15, 15]
    half.teardown("fit")
    resumed = _stream(tmp_path, "split", 120, parallel)
    resumed.load_state_dict(state)
    rest = list(resumed.batches())
    assert len(rest) == 30
    for a, b in zip(expected[20:], rest, strict=True):
        assert (a == b).all(), "a batch after the resume differs"
    for a, b in zip(straight.replay.buffers, resumed.replay.buffers, strict=True):
        assert int(a.write_count) == int(b.write_count)
        assert (a.storage.get(torch.arange(32)) == b.storage.get(torch.arange(32))).all()
    for dm in (straight, resumed):
        dm.teardown("fit")


def test_worker_process_envs_collect_what_serial_envs_collect(
    tmp_path: Path, one_torch_thread_seeded: None
) -> None:
    """The default for several envs: each env in a worker process, stepped together, acted for with one
    batched call; the stream is the one serial envs give, batch for batch."""
    batches, counters = {}, {}
    for parallel in (True, False):  # one after the other: each stream seeds torch when it is built
        dm = _stream(tmp_path, f"parallel-{parallel}", 60, parallel)
        batches[parallel], counters[parallel] = list(dm.batches()), dict(dm.counters)
        dm.teardown("fit")
    assert len(batches[True]) == len(batches[False]) == 20
    for a, b in zip(batches[True], batches[False], strict=True):
        assert (a == b).all(), "worker-process envs collected other steps than serial envs"
    assert counters[True] == counters[False]


@pytest.mark.slow
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
    data = data_state(a)
    # 400 frames = 100 agent steps, 50 per env; 40 prefill steps; one update per agent step after them.
    assert data["counters"]["env_frames"] == 400 and data["counters"]["agent_steps"] == 100
    assert a["hwm"]["updates"] == 60
    # Each env's lane: its 50 steps plus the reset observation of each of its 3 episodes (20 steps each).
    assert [lane["write_count"] for lane in data["replay"]["lanes"]] == [53, 53]
    assert {c["file"].split("/")[1] for c in data["replay"]["chunks"]} == {"env0", "env1"}
    assert data_state(half)["in_flight_steps"] == [5, 5]  # 25 steps each: mid-episode
    assert_same_training(a, b, tmp_path)
    for lane_a, lane_b in zip(data["replay"]["lanes"], data_state(b)["replay"]["lanes"], strict=True):
        assert lane_a["write_count"] == lane_b["write_count"]


@pytest.mark.slow
def test_four_parallel_pixel_envs(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    args = ["--config", str(TINY_CONFIG), "--data.num_envs", "4", "--data.from_pixels", "true"]
    args += ["--data.eval_envs", "2", "--data.eval_episodes", "3", "--checkpoint.every_updates", "0"]
    fit_and_load(tmp_path, args, timeout=600)
    data = data_state(load_checkpoint(run_folder(tmp_path) / "last.ckpt"))
    assert data["counters"]["env_frames"] == 400
    # 25 steps per env: one finished episode of 20 steps and 5 of the next, plus their reset observations.
    assert [lane["write_count"] for lane in data["replay"]["lanes"]] == [27] * 4


@pytest.mark.slow
@pytest.mark.covers_alone
def test_ddp_times_two_envs(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    fit_and_load(tmp_path, ["--config", str(TINY_CONFIG), *ddp, *NUM_ENVS], timeout=600)
    checkpoint = load_checkpoint(run_folder(tmp_path) / "last.ckpt")
    data = data_state(checkpoint)
    # 2 processes x 2 envs: 100 agent steps in all, 25 per env; 30 updates of 2 batches each.
    assert data["counters"]["env_frames"] == 400 and checkpoint["hwm"]["updates"] == 30
    assert [[lane["write_count"] for lane in r["replay"]["lanes"]] for r in data["ranks"]] == [[27, 27]] * 2
