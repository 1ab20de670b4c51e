"""Atari 100k and Meta-world built as HarmonyDream's authors ran them (dreamerv3-jax ``atari100k``, wmlib's
Meta-world): the protocol details each test names are the ones a reproduction would silently get wrong."""

from __future__ import annotations

import hashlib

import ale_py
import numpy as np
import pytest
import torch

from hwm.envs_atari import AtariEnv, area_resize, make_atari_env
from hwm.suites import suite_options


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
