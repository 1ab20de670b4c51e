"""Atari 100k and Meta-world built as HarmonyDream's authors ran them (dreamerv3-jax ``atari100k``, wmlib's
Meta-world): the protocol details each test names are the ones a reproduction would silently get wrong."""

from __future__ import annotations

import hashlib

import ale_py
import mujoco
import numpy as np
import pytest
import torch

from hwm.envs.atari import AtariEnv, area_resize, make_atari_env
from hwm.envs.metaworld import CORNER2_POS, MetaWorldSteps, make_metaworld_env
from hwm.envs.suites import suite_options


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# -- Atari --------------------------------------------------------------------------------------------------


def test_atari_defaults_are_the_authors_atari100k() -> None:
    assert suite_options("atari") == {"sticky": 0.0, "actions": "needed", "noops": 30}
    # The game's minimal action set.
    assert make_atari_env(task="pong").action_spec.shape == (6,)
    assert make_atari_env(task="breakout").action_spec.shape == (4,)
    assert make_atari_env(task="breakout", actions="all").action_spec.shape == (18,)


def _frames(seed: int, sticky: float, steps: int = 150) -> list[np.ndarray]:
    env = AtariEnv("breakout", sticky=sticky, noops=0, seed=seed)
    frames = [env.reset()[0]["pixels"]]
    actions = np.random.default_rng(0).integers(env.action_space.n, size=steps)
    frames += [env.step(a)[0]["pixels"] for a in actions]
    return frames


def test_atari_without_sticky_actions_the_actions_alone_fix_the_frames() -> None:
    # ALE's seed only feeds sticky actions: with none, two seeds play the same game.
    assert all(np.array_equal(a, b) for a, b in zip(_frames(1, 0.0), _frames(2, 0.0), strict=True))
    # With sticky actions (Machado et al.) the seeds diverge: the comparison above can fail.
    assert not all(np.array_equal(a, b) for a, b in zip(_frames(1, 0.25), _frames(2, 0.25), strict=True))


def test_atari_reset_noops_are_0_to_29() -> None:
    # randint(30) as the authors: 0..29 no-op frames; ALE's episode frame counter starts at 0 on reset.
    env = AtariEnv("pong", from_pixels=False, seed=0)
    counts = []
    for _ in range(300):
        env.reset()
        counts.append(env.ale.getEpisodeFrameNumber())
        assert env.frames == 0  # the no-ops are not counted against the time limit
    assert set(counts) == set(range(30))
    for noops in (0, 1):  # randint's bound is exclusive: both mean none
        env = AtariEnv("pong", from_pixels=False, noops=noops)
        env.reset()
        assert env.ale.getEpisodeFrameNumber() == 0


def test_atari_chopper_command_cap_is_5400_frames_truncated() -> None:
    # The authors' README caps Chopper Command at 5,400 of their env's steps, i.e. emulator frames: 1,350
    # agent steps at repeat 4. Doing nothing never ends this game (why they capped it).
    env = make_atari_env(task="chopper_command", from_pixels=False, time_limit=5400)
    noop = torch.zeros(env.action_spec.shape)
    noop[0] = 1
    rollout = env.rollout(2000, policy=lambda td: td.set("action", noop.clone()), break_when_any_done=True)
    assert rollout.shape == (1350,)
    assert rollout["next", "truncated"][-1].item() and not rollout["next", "truncated"][:-1].any()
    assert not rollout["next", "terminated"].any()  # theirs marks it terminal; a time limit is no end state
    assert env.base_env._env.frames == 5400
    env.close()


def test_area_resize_is_the_exact_area_average() -> None:
    # 210x160 -> 10x10: every output pixel is the mean of one 21x16 block.
    image = np.random.default_rng(0).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    sums = image.reshape(10, 21, 10, 16, 3).sum((1, 3), dtype=np.int64)
    out = area_resize(image, 10).astype(np.int64)
    nearest = (2 * sums + 336) // 672  # round half up
    tie = sums % 336 == 168  # exactly x.5: float round-off may go either way, as OpenCV's
    assert np.array_equal(out[~tie], nearest[~tie])
    assert np.all(np.abs(out[tie] * 336 - sums[tie]) == 168)


def test_area_resize_matches_opencv_inter_area() -> None:
    # Digests of cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA), computed with
    # opencv-python-headless 4.14 and 5.0 (identical), which this project does not depend on. Over 1,600
    # max-pooled frames of 8 games the output matched cv2 exactly; Pillow's filters differ by 0.8-1.6 on
    # average (max 28-70).
    noise = np.random.default_rng(0).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    assert _digest(area_resize(noise, 64)) == "f8d0ea686bbf029e"
    env = AtariEnv("breakout", noops=0, seed=0)
    env.reset()
    env.ale.act(ale_py.Action.FIRE)
    for _ in range(99):
        env.ale.act(ale_py.Action.NOOP)
    before = env.ale.getScreenRGB()
    env.ale.act(ale_py.Action.NOOP)
    frame = np.maximum(before, env.ale.getScreenRGB())
    assert _digest(frame) == "8a42f24bc3745a33"  # the same emulator frame as when the digest was taken
    assert _digest(area_resize(frame, 64)) == "b151013dcd81097f"


@pytest.mark.parametrize("repeat", [1, 4])
def test_atari_pools_the_last_two_frames(repeat: int) -> None:
    # A repeat-1 twin replays the same frames one at a time (no sticky actions, no no-ops).
    env, twin = AtariEnv("breakout", repeat=repeat, noops=0), AtariEnv("breakout", repeat=1, noops=0)
    obs, _ = env.reset()
    twin.reset()
    assert np.array_equal(obs["pixels"], area_resize(twin.ale.getScreenRGB(), 64))  # reset: the screen itself
    for action in np.random.default_rng(1).integers(4, size=30):
        obs = env.step(action)[0]["pixels"]
        screens = []
        for _ in range(repeat):
            twin.step(action)
            screens.append(twin.ale.getScreenRGB())
        pooled = np.maximum(screens[-2], screens[-1]) if repeat > 1 else screens[-1]
        assert np.array_equal(obs, area_resize(pooled, 64))


# -- Meta-world ---------------------------------------------------------------------------------------------


def _goals(env, resets: int) -> np.ndarray:
    # The goal-observable state ends with the goal position.
    return np.stack([env.reset()["observation"][-3:].numpy() for _ in range(resets)])


def test_metaworld_draws_a_new_goal_every_reset_from_its_seed() -> None:
    env = make_metaworld_env(task="reach", from_pixels=False, seed=0)
    goals = _goals(env, 60)
    # Continuous resampling: no repeats in 60 episodes (MT1 picks among 50 fixed goals).
    assert len({tuple(g) for g in goals}) == 60
    env.set_seed(0)
    assert np.array_equal(_goals(env, 60), goals)  # re-seeding replays the sequence
    other = make_metaworld_env(task="reach", from_pixels=False, seed=1)
    assert not np.array_equal(_goals(other, 3), goals[:3])
    # Resume: the state taken before a reset makes a later reset draw the same goal.
    inner = env.base_env._env
    first = _goals(env, 1)
    state = inner.episode_rng_state()
    _goals(env, 2)
    inner.set_episode_rng_state(state)
    assert np.array_equal(_goals(env, 1), first)
    for e in (env, other):
        e.close()


def _wood(image: np.ndarray) -> np.ndarray:
    """Pixels of the wooden table top (HWC): brown, unlike the red arm, grey walls and white floor."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return (g - b > 12) & (r - g > 15) & (r - g < 70)


@pytest.mark.parametrize("camera", ["corner", "corner2"])
def test_metaworld_pixels_upright_as_the_authors_saw_them(camera: str) -> None:
    env = make_metaworld_env(task="lever-pull", camera=camera, seed=1)
    td = env.reset()
    assert td["pixels"].shape == (3, 64, 64) and td["pixels"].dtype == torch.uint8
    image = td["pixels"].permute(1, 2, 0).numpy()
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # a picture, not a flat colour
    # Upright: the table is in the lower half (mujoco's true picture of these cameras has it on top).
    wood = _wood(image)
    assert wood.mean() > 0.1 and wood[32:].sum() > 0.85 * wood.sum()
    # Exactly a fresh renderer's picture read bottom-up, as mujoco-py's sim.render returned it.
    inner = env.base_env._env
    fresh = mujoco.Renderer(inner._env.model, 64, 64)
    fresh.update_scene(inner._env.data, camera=camera)
    assert np.array_equal(image, fresh.render()[::-1])
    fresh.close()
    pos = inner._env.model.cam("corner2").pos
    assert np.allclose(
        pos, CORNER2_POS if camera == "corner2" else (1.3, -0.2, 1.1)
    )  # their fix: corner2 only
    env.close()


def test_metaworld_unknown_camera_lists_cameras() -> None:
    with pytest.raises(ValueError, match="Unknown Meta-world camera 'corner9'.*corner2") as info:
        make_metaworld_env(task="reach", camera="corner9")
    assert "topview" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("time_limit", "repeat", "steps"), [(500, 1, 500), (500, 3, 166)])
def test_metaworld_time_limit_in_env_steps(time_limit: int, repeat: int, steps: int) -> None:
    # 500 env steps is Meta-world's max_path_length: the episode ends there, truncated, without raising.
    env = make_metaworld_env(task="reach", from_pixels=False, time_limit=time_limit, action_repeat=repeat)
    rollout = env.rollout(1000, break_when_any_done=True)
    assert rollout.shape == (steps,)
    assert rollout["next", "truncated"][-1].item() and not rollout["next", "terminated"].any()
    assert env.base_env._env._env.curr_path_length == steps * repeat
    env.close()


class FakeMetaworldFlags:
    """A stand-in Meta-world env whose success flag follows a script, one value per env step."""

    def __init__(self, flags: list[float]) -> None:
        self.flags, self.steps = flags, 0
        self.np_random = np.random.default_rng(0)
        self.observation_space = type("S", (), {"shape": (39,)})()
        self.action_space = type("A", (), {"low": -np.ones(4), "high": np.ones(4)})()

    def reset(self) -> tuple[np.ndarray, dict]:
        self.steps = 0
        return np.zeros(39), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.steps += 1
        return np.zeros(39), 1.0, False, False, {"success": self.flags[self.steps - 1]}


def test_metaworld_success_is_sticky_and_rewards_sum_over_repeats() -> None:
    inner = FakeMetaworldFlags([0, 0, 0, 1, 0, 0, 0, 0])
    steps = MetaWorldSteps(inner, from_pixels=False, repeat=2, max_agent_steps=4)
    assert steps.reset()[0]["success"].item() == 0.0
    out = [steps.step(np.zeros(4)) for _ in range(4)]
    assert [o[0]["success"].item() for o in out] == [0.0, 1.0, 1.0, 1.0]  # raised at env step 4, kept
    assert [o[1] for o in out] == [2.0] * 4 and inner.steps == 8
    assert [o[3] for o in out] == [False, False, False, True]
    steps.reset()
    assert steps.step(np.zeros(4))[0]["success"].item() == 0.0  # a new episode starts unsuccessful
