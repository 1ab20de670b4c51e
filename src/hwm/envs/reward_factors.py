"""The factors of a DMC task's reward, computed from the physics state and the applied control.

A return alone does not say why an episode scored what it did: cartpole's reward is the product
upright x centred x small_control x small_velocity, so 700 can be a pole held upright with saturated pushes
(small_control = 0.8 at |u| = 1) or a gentle controller off centre. The env reports each factor per agent
step (the mean over its repeated physics steps) under ``REWARD_FACTORS_KEY``, and evaluation logs their
episode means. The formulas are dm_control's own (``suite/cartpole.py``, ``_get_reward`` with
``sparse=False``), restated per factor; a test checks that their product is the reward dm_control gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

REWARD_FACTORS_KEY = "reward_factors"


def _tolerance(x: Any, **kwargs: Any) -> np.ndarray:
    from dm_control.utils import rewards  # light: numpy only, no MuJoCo

    return np.asarray(rewards.tolerance(x, **kwargs), dtype=np.float64)


def _cartpole(physics: Any) -> np.ndarray:
    upright = float(((physics.pole_angle_cosine() + 1) / 2).mean())
    centered = float((1 + _tolerance(physics.cart_position(), margin=2)) / 2)
    control = _tolerance(physics.control(), margin=1, value_at_margin=0, sigmoid="quadratic")[0]
    small_control = float((4 + control) / 5)
    small_velocity = float((1 + _tolerance(physics.angular_vel(), margin=5).min()) / 2)
    return np.array([upright, centered, small_control, small_velocity], dtype=np.float32)


@dataclass(frozen=True)
class RewardFactors:
    """A domain's factor names and the function reading them from the physics after a step."""

    names: tuple[str, ...]
    compute: Callable[[Any], np.ndarray]


DOMAINS: dict[str, RewardFactors] = {
    "cartpole": RewardFactors(("upright", "centered", "small_control", "small_velocity"), _cartpole),
}


def for_task(task: str) -> RewardFactors | None:
    """The factors of a DMC ``domain-task``'s dense reward; None where none are defined (or the task's
    reward is sparse, which is not a product of these factors)."""
    domain, _, name = task.partition("-")
    if name.endswith("sparse"):
        return None
    return DOMAINS.get(domain)
