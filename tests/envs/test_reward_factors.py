"""What explains a return: the reward's factors from the physics, the action size, the reward error split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwm.envs import reward_factors
from hwm.envs.dmc import make_env
from hwm.envs.reward_factors import REWARD_FACTORS_KEY
from hwm.models.world_model import reward_error_metrics


@pytest.mark.parametrize("task", ["cartpole-balance", "cartpole-swingup"])
@pytest.mark.parametrize("pixels", [False, True])
def test_cartpole_factors_multiply_to_dm_controls_reward(task: str, pixels: bool) -> None:
    """With one physics step per agent step, the factors' product is the reward dm_control paid."""
    env = make_env(task=task, from_pixels=pixels, action_repeat=1, time_limit=60, seed=3)
    td = env.rollout(60)  # random actions: every factor moves
    factors = td.get(("next", REWARD_FACTORS_KEY))
    assert factors.shape == (60, 4)
    torch.testing.assert_close(factors.prod(-1), td.get(("next", "reward")).squeeze(-1), rtol=1e-5, atol=1e-6)
    assert (factors > 0).all() and (factors <= 1).all()
    # small_control = 1 - u^2 / 5 of the action actually applied.
    control = 1 - td.get("action")[:, 0].clamp(-1, 1).double() ** 2 / 5
    torch.testing.assert_close(factors[:, 2].double(), control, rtol=1e-5, atol=1e-6)
    env.close()


def test_factors_with_action_repeat_are_the_mean_over_the_repeats() -> None:
    env = make_env(task="cartpole-balance", action_repeat=4, seed=0)
    td = env.rollout(10)
    # A constant control over the repeats gives the same small_control on each: its mean is that value.
    control = 1 - td.get("action")[:, 0].double() ** 2 / 5
    torch.testing.assert_close(
        td.get(("next", REWARD_FACTORS_KEY))[:, 2].double(), control, rtol=1e-5, atol=1e-6
    )
    # The reset observation carries zeros (nothing happened yet).
    assert td.get(REWARD_FACTORS_KEY)[0].abs().sum() == 0


@pytest.mark.parametrize("task", ["cheetah-run", "cartpole-balance_sparse"])
def test_tasks_without_factors_observe_none(task: str) -> None:
    assert reward_factors.for_task(task) is None
    env = make_env(task=task, seed=0)
    assert REWARD_FACTORS_KEY not in env.observation_spec.keys()
    env.close()


def test_reward_error_is_split_by_the_size_of_the_action_that_earned_it() -> None:
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    reward = torch.tensor([[1.0, 3.0, 0.0, 1.0]])  # errors 0, 4, 1, 0
    action = torch.tensor([[[0.1], [0.9], [-0.2], [-0.6]]])  # large at steps 1 and 3
    m = reward_error_metrics(pred, reward, action)
    assert float(m["reward_mse"]) == pytest.approx(5 / 4)
    assert float(m["reward_mse_large_action"]) == pytest.approx(4 / 2)
    assert float(m["reward_mse_small_action"]) == pytest.approx(1 / 2)
    assert float(m["large_action_share"]) == pytest.approx(0.5)
    # No large action at all: its split reads 0, and its share says why.
    m = reward_error_metrics(pred, reward, torch.zeros(1, 4, 1))
    assert float(m["reward_mse_large_action"]) == 0.0 and float(m["large_action_share"]) == 0.0


def test_tiny_run_logs_what_explains_its_return(tiny_run) -> None:
    metrics = tiny_run.run.data.metrics
    names = reward_factors.DOMAINS["cartpole"].names
    for key in ["eval/action_abs_mean", *(f"eval/reward_factor_{n}" for n in names)]:
        assert key in metrics, sorted(metrics)
    assert 0 <= metrics["eval/action_abs_mean"] <= 1
    # The evaluation episodes' factors explain their return: mean reward per frame <= product bound 1.
    assert all(0 < metrics[f"eval/reward_factor_{n}"] <= 1 for n in names)
    for key in ("reward_mse", "reward_mse_large_action", "reward_mse_small_action", "large_action_share"):
        assert np.isfinite(metrics[f"world_model/{key}"])
