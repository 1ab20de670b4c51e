"""Envs in worker processes leave the learner the threads the run chose (TorchRL's ParallelEnv would lower
them while its workers live, and raise them again when they close), and leave stopping to the run."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from functools import partial

import pytest
import torch

from hwm.agent import HarmonyDreamAgent
from hwm.data.datamodule import ReplayDataModule
from hwm.models.actor_critic import ActorCritic
from hwm.models.world_model import WorldModel

TINY_WM = dict(deter=16, hidden=16, stoch=4, classes=4, cnn_depth=4, mlp_units=32, mlp_layers=1)
TINY_AC = dict(units=32, layers=1, horizon=3)
CHOSEN = 3  # not what TorchRL would pick for 2 workers on any machine it lowers from (threads - 2)


@pytest.fixture
def chosen_threads() -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(CHOSEN)
    yield CHOSEN
    torch.set_num_threads(before)


def test_worker_envs_keep_the_learners_threads_and_outlive_stop_signals(chosen_threads: int) -> None:
    dm = ReplayDataModule(
        task="cartpole-balance",
        time_limit=40,
        action_repeat=2,
        total_frames=40,
        prefill_frames=20,
        batch_size=2,
        seq_len=4,
        train_ratio=8.0,
        capacity=1000,
        eval_every=0,
        eval_episodes=0,
        num_envs=2,
        parallel_envs=True,
    )
    agent = HarmonyDreamAgent(
        dm.env_info, world_model=partial(WorldModel, **TINY_WM), actor_critic=partial(ActorCritic, **TINY_AC)
    )
    try:
        dm.attach_policy(agent.policy())  # two training envs, each in its worker process, reset once
        assert torch.get_num_threads() == chosen_threads
        # A Ctrl-C in the terminal (or SLURM's signals) reach the workers too: they leave stopping to the run.
        assert dm.collection is not None
        for worker in dm.collection.env._workers:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                os.kill(worker.pid, sig)
        list(dm.batches())  # collects its 40 frames from both workers
        assert dm.stream_finished and dm.counters["env_frames"] == 40
        assert torch.get_num_threads() == chosen_threads
    finally:
        dm.teardown("fit")  # closes the workers
    assert torch.get_num_threads() == chosen_threads
