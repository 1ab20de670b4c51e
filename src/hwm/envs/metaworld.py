"""Meta-world v3 (``metaworld`` 3.1.1, ``mujoco``) as TorchRL envs, built as HarmonyDream's authors built v2.

Their env (``wmlib/envs/metaworld.py``, metaworld v2 on mujoco-py) is the task's ``-goal-observable`` class
with ``_freeze_rand_vec = False``: a fresh goal/object configuration is drawn at every reset (uniform over the
task's reset space), instead of MT1's 50 fixed configurations. Here that class is seeded and draws from its
own generator (``seeded_rand_vec``), so ``seed`` fixes the whole sequence of configurations; theirs drew
from the process-global numpy generator. Pixels come from one kept ``mujoco.Renderer`` per env at the final
size (64x64), camera ``corner`` by default as theirs; ``corner2`` gets their pose fix (``cam_pos`` =
(0.75, 0.075, 0.7), the same pose as v3's ``corner4``), no other camera is moved.

Orientation: mujoco-py's offscreen ``sim.render`` returned OpenGL's rows bottom-up (``read_pixels`` never
flips), so the authors' network saw every camera's picture flipped vertically. For ``corner`` (and
``corner2``) that flip is what makes the picture upright, because those cameras are defined upside down
(``corner``'s image-up axis ``xyaxes[3:]`` = (-0.2, -0.2, -1) points at the floor): ``mujoco.Renderer``'s
true picture shows the table at the top. Frames here are flipped the same way, so they are the authors'
frames (upright, and left-right mirrored against a physical camera, which a CNN learns equally well).

Action repeat lives in :class:`MetaWorldSteps` (one render per agent step, not per env step). Episodes
are ``time_limit`` env steps (the benchmark's 500 at most: v3 raises past it) and end truncated; Meta-world
never terminates on its own. Each step reports ``success``: 1.0 once the task's success flag has been
raised at any env step of the episode so far, so the last step of an episode says whether the episode
succeeded (the authors count an episode successful if any step was).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE  # noqa: E402
from torchrl.envs import EnvBase, GymWrapper  # noqa: E402

from hwm.envs.common import OBS_KEY, PIXELS_KEY, finish_env, tune_rendering  # noqa: E402
from hwm.envs.snapshot import (  # noqa: E402
    mujoco_state,
    plain_attributes,
    restore_attributes,
    set_mujoco_state,
)

__all__ = [
    "CORNER2_POS",
    "MAX_EPISODE_STEPS",
    "MetaWorldSteps",
    "make_metaworld_env",
    "metaworld_cameras",
    "metaworld_tasks",
]

MAX_EPISODE_STEPS = 500  # Meta-world's max_path_length: stepping past it raises
CORNER2_POS = (0.75, 0.075, 0.7)  # the authors' corner2 position (their env sets it at every reset)


def metaworld_tasks() -> list[str]:
    """Task names without the ``-v3`` suffix, e.g. ``lever-pull``."""
    return sorted(name.removesuffix("-v3") for name in metaworld.ALL_V3_ENVIRONMENTS)


def metaworld_cameras(model: mujoco.MjModel) -> list[str]:
    """The named cameras of a Meta-world model (``corner``, ``corner2``, ``topview``, ``gripperPOV`` ...)."""
    names = (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam))
    return [name for name in names if name]


class MetaWorldSteps(gym.Env):
    """Action repeat, the time limit, the observation (pixels or state) and the episode's success flag.

    Rewards are summed over the repeated env steps (the authors' repeat also stops at a success; with their
    repeat of 1 that never matters). Pixels are rendered once per agent step by a renderer kept for the
    env's life and flipped vertically as mujoco-py returned them (module docstring).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        env: Any,
        *,
        from_pixels: bool,
        repeat: int,
        max_agent_steps: int,
        size: int = 64,
        camera: str = "corner",
    ) -> None:
        self._env = env
        self._from_pixels = from_pixels
        self._repeat = repeat
        self._max_agent_steps = max_agent_steps
        self._camera = camera
        self._steps = 0
        self._success = 0.0
        self._episode_rng: dict[str, Any] | None = None  # set at each reset
        # Render knobs (tune_rendering) must already be on the model: the GL context is made here.
        self._renderer = mujoco.Renderer(env.model, size, size) if from_pixels else None
        if from_pixels:
            obs_space: gym.Space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
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

    def picture(self) -> np.ndarray:
        """The camera's current picture, rows bottom-up as mujoco-py's ``sim.render`` (upright for corner)."""
        assert self._renderer is not None, "built without pixels"
        self._renderer.update_scene(self._env.data, camera=self._camera)
        return np.ascontiguousarray(self._renderer.render()[::-1])

    def _obs(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = self.picture() if self._from_pixels else np.asarray(state, dtype=np.float32)
        return {self._key: obs, "success": np.array([self._success], np.float32)}

    def episode_rng_state(self) -> dict[str, Any] | None:
        """The goal generator's state just before this episode's reset (resume)."""
        return self._episode_rng

    def set_episode_rng_state(self, state: dict[str, Any]) -> None:
        """The next reset then draws the same goal/object configuration as the episode ``state`` came from."""
        self._env.np_random.bit_generator.state = state

    def sim_state(self) -> dict[str, Any]:
        """MuJoCo's state, the goal generator and the task's Python-side episode state (its goal, initial
        positions, previous observation, path length): exact mid-episode resume."""
        env = self._env
        return {
            "mujoco": mujoco_state(env.model, env.data),
            "np_random": env.np_random.bit_generator.state,
            "task": plain_attributes(env),
            "steps": self._steps,
            "success": self._success,
            "episode_rng": self._episode_rng,
        }

    def set_sim_state(self, state: dict[str, Any]) -> None:
        env = self._env
        set_mujoco_state(env.model, env.data, state["mujoco"])
        env.np_random.bit_generator.state = state["np_random"]
        restore_attributes(env, state["task"])
        self._steps, self._success, self._episode_rng = state["steps"], state["success"], state["episode_rng"]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            # SawyerXYZEnv.reset ignores its seed; seed() reseeds the generator the goals are drawn from.
            self._env.seed(seed)
        self._episode_rng = self._env.np_random.bit_generator.state
        state, info = self._env.reset()
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
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()


def make_metaworld_env(
    *,
    task: str = "lever-pull",
    from_pixels: bool = True,
    image_size: int = 64,
    action_repeat: int = 1,
    time_limit: int = 500,
    seed: int = 0,
    fast_render: bool = True,
    shadows: bool = True,
    camera: str = "corner",
) -> EnvBase:
    """A seeded Meta-world v3 env for TorchRL, a new goal per episode (the authors' setup).

    Args:
        task: a Meta-world v3 task without its version, e.g. ``lever-pull`` (``lever-pull-v3`` works too).
        from_pixels: ``pixels`` (uint8, 3 x size x size) instead of the 39-d state ``observation`` (goal
            included: the goal-observable env).
        image_size: rendered height and width.
        action_repeat: env steps per agent step (the authors': 1).
        time_limit: episode length in env steps (at most 500, the benchmark's limit).
        seed: seeds the goal/object configuration drawn at each reset.
        fast_render: no MSAA, 512px shadow maps (picture differs only at edges): ~3.5x faster.
        shadows: False turns cast shadows and reflections off: ~3x faster again; the picture changes (no
            shadow under the arm, no reflection on the table).
        camera: a Meta-world camera name; ``corner`` is the authors'; ``corner2`` gets their pose fix.
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
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    # The registry's classes take a seed; its value type (their base class) does not say so.
    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{name}-v3-goal-observable"](seed=seed)  # type: ignore[call-arg]
    cameras = metaworld_cameras(env.model)
    if camera not in cameras:
        env.close()
        raise ValueError(f"Unknown Meta-world camera {camera!r}; valid cameras: {', '.join(cameras)}")
    # The constructor froze the configuration it drew; unfreeze as the authors, from the seeded generator.
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    if camera == "corner2":
        env.model.cam(camera).pos[:] = CORNER2_POS
    tune_rendering(env.model, fast=fast_render, shadows=shadows)
    steps = MetaWorldSteps(
        env,
        from_pixels=from_pixels,
        repeat=action_repeat,
        max_agent_steps=time_limit // action_repeat,
        size=image_size,
        camera=camera,
    )
    return finish_env(GymWrapper(steps), from_pixels, seed, steps)
