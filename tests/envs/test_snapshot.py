"""An env's state_dict carries its simulator: a fresh env loaded with it continues the episode bitwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from hwm.envs.suites import EnvConfig

# Short episodes: the steps after the snapshot cross an episode end and a reset.
CASES = {
    "dmc_states": EnvConfig("dmc", "cartpole-swingup", False, 64, 2, 30),
    "dmc_pixels": EnvConfig("dmc", "reacher-easy", True, 64, 2, 30),
    "distracted": EnvConfig("distracted_dmc", "cheetah-run", True, 64, 2, 30),
    "metaworld": EnvConfig("metaworld", "reach", False, 64, 1, 15),
    "metaworld_pixels": EnvConfig("metaworld", "lever-pull", True, 64, 1, 15),
    "atari": EnvConfig("atari", "pong", True, 64, 4, 60, options={"sticky": 0.25}),
}


def _steps(env, td, key: str, actions: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for action in actions:
        transition, td = env.step_and_maybe_reset(td.set("action", action))
        nxt = transition.get("next")
        out.append(
            torch.cat([nxt.get(key).flatten().float(), nxt.get("reward").flatten(), td.get(key).flatten()])
        )
    return out


def _same(a: Any, b: Any) -> bool:
    """Snapshots compared exactly: arrays bitwise, ALE states with ALE's own comparison."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, "equals"):
        return a.equals(b)
    return a == b


@pytest.mark.parametrize("name", list(CASES))
def test_loaded_state_continues_the_episode_bitwise(name: str) -> None:
    config = CASES[name]
    torch.manual_seed(0)
    a, b = config.make(3), config.make(3)
    try:
        td = a.reset()
        b.reset()
        for _ in range(7):  # mid-episode, away from the reset state
            td = a.step(td.set("action", a.action_spec.rand()))["next"]
        state = a.state_dict()
        actions = [a.action_spec.rand() for _ in range(12)]
        straight = _steps(a, td.clone(), config.obs_key, actions)
        assert not torch.equal(b.reset().get(config.obs_key), td.get(config.obs_key))
        b.load_state_dict(state)
        assert _same(b.state_dict(), state), "loading changed the state it loaded"
        resumed = _steps(b, td.clone(), config.obs_key, actions)
        for i, (x, y) in enumerate(zip(straight, resumed, strict=True)):
            assert torch.equal(x, y), f"step {i} after the snapshot differs"
        # The whole simulator state, not only what the observations show.
        assert _same(a.state_dict(), b.state_dict())
    finally:
        a.close()
        b.close()
