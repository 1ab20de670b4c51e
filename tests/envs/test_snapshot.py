"""An env's state_dict carries its simulator: a fresh env loaded with it continues the episode bitwise."""

from __future__ import annotations

import pytest
import torch

from hwm.envs.suites import EnvConfig

CASES = {
    "dmc_states": EnvConfig("dmc", "cartpole-swingup", False, 64, 2, 200),
    "dmc_pixels": EnvConfig("dmc", "reacher-easy", True, 64, 2, 200),
    "distracted": EnvConfig("distracted_dmc", "cheetah-run", True, 64, 2, 200),
    "metaworld": EnvConfig("metaworld", "reach", False, 64, 1, 100),
    "metaworld_pixels": EnvConfig("metaworld", "lever-pull", True, 64, 1, 100),
    "atari": EnvConfig("atari", "pong", True, 64, 4, 4000, options={"sticky": 0.25}),
}


def _steps(env, td, key: str, actions: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for action in actions:
        td = env.step(td.set("action", action))["next"]
        out.append(torch.cat([td.get(key).flatten().float(), td.get("reward").flatten()]))
    return out


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
        actions = [a.action_spec.rand() for _ in range(6)]
        straight = _steps(a, td.clone(), config.obs_key, actions)
        assert not torch.equal(b.reset().get(config.obs_key), td.get(config.obs_key))
        b.load_state_dict(state)
        resumed = _steps(b, td.clone(), config.obs_key, actions)
        for i, (x, y) in enumerate(zip(straight, resumed, strict=True)):
            assert torch.equal(x, y), f"step {i} after the snapshot differs"
    finally:
        a.close()
        b.close()
