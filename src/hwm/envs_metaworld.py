"""Meta-world v3 (``metaworld`` 3.1.1, gymnasium API) as TorchRL envs, from 64x64 pixels or states.

``gym.make('Meta-World/MT1', env_name=...)`` draws 50 goal/object configurations of one task from its
seed and picks one at random on every reset; both are seeded here, so a seed fixes the whole sequence.
Action repeat lives in :class:`MetaWorldSteps` (one render per agent step, not per physics step, which is
what ``GymWrapper(frame_skip=...)`` would do). Episodes are ``time_limit`` env steps (the benchmark's
500 at most) and end truncated; Meta-world never terminates on its own. Each step reports ``success``:
1.0 once the task's success flag has been raised at any env step of the episode so far, so the last step
of an episode says whether the episode succeeded.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402, F401  (registers the Meta-World/* ids)
import numpy as np  # noqa: E402
from torchrl.envs import EnvBase, GymWrapper  # noqa: E402

from hwm.envs import OBS_KEY, PIXELS_KEY, finish_env, tune_rendering  # noqa: E402

__all__ = ["MAX_EPISODE_STEPS", "MetaWorldSteps", "make_metaworld_env", "metaworld_tasks"]

MAX_EPISODE_STEPS = 500  # Meta-world's max_path_length: stepping past it raises


def metaworld_tasks() -> list[str]:
    """Task names without the ``-v3`` suffix, e.g. ``lever-pull``."""
    return sorted(name.removesuffix("-v3") for name in metaworld.ALL_V3_ENVIRONMENTS)


class MetaWorldSteps(gym.Env):
    """Action repeat, the time limit, the observation (pixels or state) and the episode's success flag.

    Rewards are summed over the repeated steps. Pixels are rendered once per agent step and flipped upside
    down: ``corner2`` (and the other fixed cameras) come out of metaworld 3.1.1's renderer upside down.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env: gym.Env, *, from_pixels: bool, repeat: int, max_agent_steps: int) -> None:
        self._env = env
        self._from_pixels = from_pixels
        self._repeat = repeat
        self._max_agent_steps = max_agent_steps
        self._steps = 0
        self._success = 0.0
        if from_pixels:
            size = (env.unwrapped.height, env.unwrapped.width, 3)
            obs_space: gym.Space = gym.spaces.Box(0, 255, size, np.uint8)
            key = PIXELS_KEY
        else:
            shape = env.observation_space.shape
            obs_space, key = gym.spaces.Box(-np.inf, np.inf, shape, np.float32), OBS_KEY
        self._key = key
        self.observation_space = gym.spaces.Dict(
            {key: obs_space, "success": gym.spaces.Box(0.0, 1.0, (1,), np.float32)}
        )
        inner = env.action_space
        self.action_space = gym.spaces.Box(inner.low.astype(np.float32), inner.high.astype(np.float32))

    def _obs(self, state: np.ndarray) -> dict[str, np.ndarray]:
        if self._from_pixels:
            obs = np.ascontiguousarray(self._env.render()[::-1])
        else:
            obs = np.asarray(state, dtype=np.float32)
        return {self._key: obs, "success": np.array([self._success], np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            # SawyerXYZEnv.reset ignores its seed; seed() reseeds the simulator and the generator that the
            # task-select wrapper draws the next configuration from.
            self._env.unwrapped.seed(seed)
        state, info = self._env.reset(options=options)
        self._steps, self._success = 0, 0.0
        return self._obs(state), info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        reward = 0.0
        for _ in range(self._repeat):
            state, r, terminated, truncated, info = self._env.step(action)
            reward += float(r)
            self._success = max(self._success, float(info["success"]))
            if terminated or truncated:
                break
        self._steps += 1
        truncated = truncated or self._steps >= self._max_agent_steps
        return self._obs(state), reward, bool(terminated), bool(truncated), {}

    def close(self) -> None:
        self._env.close()


def make_metaworld_env(
    *,
    task: str = "lever-pull",
    from_pixels: bool = True,
    image_size: int = 64,
    action_repeat: int = 2,
    time_limit: int = 500,
    seed: int = 0,
    fast_render: bool = True,
    shadows: bool = True,
    camera: str = "corner2",
) -> EnvBase:
    """A seeded Meta-world MT1 env for TorchRL.

    Args:
        task: a Meta-world v3 task without its version, e.g. ``lever-pull`` (``lever-pull-v3`` works too).
        from_pixels: ``pixels`` (uint8, 3 x size x size) instead of the 39-d state ``observation``.
        image_size: rendered height and width.
        action_repeat: env steps per agent step.
        time_limit: episode length in env steps (at most 500, the benchmark's limit).
        seed: seeds the 50 task configurations, the choice among them at each reset, and the simulator.
        fast_render: no MSAA, 512px shadow maps (picture differs only at edges): ~3.5x faster.
        shadows: False turns cast shadows and reflections off: ~3x faster again; the picture changes (no
            shadow under the arm, no reflection on the table).
        camera: a Meta-world camera name; ``corner2`` is the one the paper's DreamerV2 setup uses.
    """
    name = task.removesuffix("-v3")
    if name not in metaworld_tasks():
        raise ValueError(f"Unknown Meta-world task {task!r}; valid tasks: {', '.join(metaworld_tasks())}")
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
    if not action_repeat <= time_limit <= MAX_EPISODE_STEPS:
        raise ValueError(
            f"Meta-world time_limit must be in [action_repeat, {MAX_EPISODE_STEPS}] env steps, got {time_limit}"
        )
    env = gym.make(
        "Meta-World/MT1",
        env_name=f"{name}-v3",
        seed=seed,
        max_episode_steps=time_limit,
        render_mode="rgb_array" if from_pixels else None,
        camera_name=camera if from_pixels else None,
        width=image_size,
        height=image_size,
        disable_env_checker=True,
    )
    tune_rendering(env.unwrapped.model, fast=fast_render, shadows=shadows)
    steps = MetaWorldSteps(
        env, from_pixels=from_pixels, repeat=action_repeat, max_agent_steps=time_limit // action_repeat
    )
    return finish_env(GymWrapper(steps), action_repeat, from_pixels, seed)
