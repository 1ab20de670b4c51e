from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from hwm.envs.dmc import ActionRepeat, dmc_tasks, make_env


def _physics(env):
    # base_env._env is ActionRepeat (states) or dm_control's pixels.Wrapper, which forwards `physics`.
    return env.base_env._env.physics


@pytest.fixture(scope="module")
def pixel_env():
    env = make_env(task="cartpole-balance", from_pixels=True, image_size=64, action_repeat=2)
    yield env
    env.close()


@pytest.fixture(scope="module")
def state_env():
    env = make_env(task="cheetah-run", from_pixels=False, action_repeat=2)
    yield env
    env.close()


def test_dmc_tasks_lists_suite() -> None:
    tasks = dmc_tasks()
    assert "balance" in tasks["cartpole"]
    assert "catch" in tasks["ball_in_cup"]
    assert "run" in tasks["quadruped"]


def test_states_shapes_and_dtypes(state_env) -> None:
    td = state_env.reset()
    assert td["observation"].shape == (17,) and td["observation"].dtype == torch.float32
    assert td["is_init"].all()
    spec = state_env.action_spec
    assert spec.shape == (6,) and spec.dtype == torch.float32
    assert torch.all(spec.space.low == -1) and torch.all(spec.space.high == 1)
    td = state_env.rand_step(td)
    nxt = td["next"]
    assert nxt["observation"].shape == (17,) and nxt["observation"].dtype == torch.float32
    assert nxt["reward"].shape == (1,) and nxt["reward"].dtype == torch.float32
    for key in ("done", "terminated", "truncated", "is_init"):
        assert nxt[key].shape == (1,) and nxt[key].dtype == torch.bool
    assert not nxt["is_init"].any()


def test_pixels_shapes_and_dtypes(pixel_env) -> None:
    td = pixel_env.reset()
    # Cartpole also observes its reward's factors, a diagnostic that the world model does not encode.
    assert set(pixel_env.observation_spec.keys()) == {"pixels", "is_init", "reward_factors"}
    assert td["reward_factors"].shape == (4,)
    assert td["pixels"].shape == (3, 64, 64) and td["pixels"].dtype == torch.uint8
    td = pixel_env.rand_step(td)
    assert td["next", "pixels"].shape == (3, 64, 64) and td["next", "pixels"].dtype == torch.uint8
    assert td["next", "reward"].shape == (1,) and td["next", "reward"].dtype == torch.float32
    assert td["action"].shape == (1,) and td["action"].dtype == torch.float32


def test_check_env_specs(pixel_env, state_env) -> None:
    check_env_specs(pixel_env)
    check_env_specs(state_env)


def test_action_repeat_sums_rewards_over_physics_steps() -> None:
    from dm_control import suite

    repeat = 3
    env = make_env(task="cartpole-balance", action_repeat=repeat, seed=1)
    raw = suite.load("cartpole", "balance", task_kwargs={"random": 1})
    td = env.reset()
    raw.reset()
    # Put the raw env in exactly the state the wrapped env starts from.
    with raw.physics.reset_context():
        raw.physics.set_state(_physics(env).get_state())
    t0 = _physics(env).data.time
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, size=1).astype(np.float32)
        td["action"] = torch.as_tensor(action)
        td = env.step(td)
        expected = sum(raw.step(action).reward for _ in range(repeat))
        assert td["next", "reward"].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert expected > 0.5  # balance pays every upright frame; 0 would make this vacuous
        np.testing.assert_allclose(_physics(env).get_state(), raw.physics.get_state(), rtol=1e-6)
        td = td["next"]
    assert _physics(env).data.time - t0 == pytest.approx(5 * repeat * raw.control_timestep())
    env.close()


def test_episode_truncates_after_time_limit_over_repeat() -> None:
    env = make_env(task="cartpole-balance", time_limit=100, action_repeat=4)
    td = env.rollout(1000, break_when_any_done=True)
    assert td.shape == (25,)
    assert td["next", "truncated"][-1].item() and td["next", "done"][-1].item()
    assert not td["next", "terminated"].any()
    assert not td["next", "done"][:-1].any()
    # The next episode starts fresh and is just as long.
    td = env.rollout(1000, break_when_any_done=True)
    assert td.shape == (25,)
    env.close()


def test_action_repeat_wrapper_alone_ends_on_step_count() -> None:
    from dm_control import suite

    env = ActionRepeat(suite.load("cartpole", "balance", task_kwargs={"time_limit": float("inf")}), 2, 3)
    env.reset()
    steps = [env.step(np.zeros(1, np.float32)) for _ in range(3)]
    assert [s.last() for s in steps] == [False, False, True]
    assert steps[-1].discount == 1.0  # truncation, not termination


def test_bad_domain_lists_domains() -> None:
    with pytest.raises(ValueError, match="cheetah") as info:
        make_env(task="notadomain-run")
    assert "cartpole" in str(info.value) and "walker" in str(info.value)


def test_bad_task_lists_tasks_of_domain() -> None:
    with pytest.raises(ValueError, match="swingup") as info:
        make_env(task="cartpole-notatask")
    assert "balance" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"action_repeat": 0}, {"time_limit": 1, "action_repeat": 2}, {"image_size": 8}, {"task": "cartpole"}],
)
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        make_env(**{"task": "cartpole-balance", **kwargs})


def test_fast_render_picture(pixel_env) -> None:
    assert _physics(pixel_env).model.vis.quality.offsamples == 0
    assert _physics(pixel_env).model.vis.quality.shadowsize == 512
    fast = pixel_env.reset()["pixels"]
    assert fast.shape == (3, 64, 64)
    assert fast.reshape(3, -1).unique(dim=1).shape[1] > 10  # not one flat colour
    slow_env = make_env(task="cartpole-balance", from_pixels=True, fast_render=False)
    # Same seed and same reset count -> same state, so the pictures should nearly match.
    pixel_env.set_seed(0)
    fast = pixel_env.reset()["pixels"].float()
    slow = slow_env.reset()["pixels"].float()
    slow_env.close()
    assert (fast - slow).abs().mean() < 8.0


def test_pixels_come_from_one_kept_camera_and_match_physics_render() -> None:
    env = make_env(task="walker-walk", from_pixels=True, seed=1)
    wrapper = env.base_env._env  # CameraPixels
    td = env.reset()
    camera = wrapper._cameras[False]
    for _ in range(3):
        td = env.rand_step(td)
        # Same state, dm_control's own (new camera per call) render: the same picture, pixel for pixel.
        expected = _physics(env).render(64, 64, camera_id=0)
        assert np.array_equal(td["next", "pixels"].permute(1, 2, 0).numpy(), expected)
        td = td["next"]
    assert wrapper._cameras[False] is camera  # kept, not rebuilt per frame
    env.close()
    assert not wrapper._cameras


def test_seed_makes_resets_reproducible() -> None:
    first = [make_env(task="cheetah-run", seed=s).reset()["observation"] for s in (3, 3, 4)]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], first[2])
