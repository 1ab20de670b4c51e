"""DeepMind Control Suite environments for the world-model trainer, as TorchRL envs.

Action repeat lives at the dm_env level (:class:`ActionRepeat`) so that the pixel wrapper
sitting on top of it renders once per *agent* step, at the final size, instead of once per
physics substep at 240x320 (which is what ``DMControlEnv(frame_skip=..)`` does: several
times slower on a CPU renderer).
"""

from __future__ import annotations

import os

# Must be set before dm_control/mujoco pick a GL backend at import time; EGL (Mesa) works
# headless and, unlike osmesa, is quiet at interpreter exit.
os.environ.setdefault("MUJOCO_GL", "egl")

import collections  # noqa: E402
from typing import Any  # noqa: E402

import dm_env  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from dm_control import suite  # noqa: E402
from dm_control.mujoco import Camera  # noqa: E402
from dm_control.rl import control  # noqa: E402
from dm_control.suite.wrappers import pixels  # noqa: E402
from dm_env import specs  # noqa: E402
from torchrl.data import Unbounded  # noqa: E402
from torchrl.envs import DMControlWrapper, EnvBase  # noqa: E402

from hwm.envs import reward_factors  # noqa: E402
from hwm.envs.common import OBS_KEY, PIXELS_KEY, finish_env, tune_rendering  # noqa: E402
from hwm.envs.reward_factors import REWARD_FACTORS_KEY, RewardFactors  # noqa: E402
from hwm.envs.snapshot import (  # noqa: E402
    mujoco_state,
    plain_attributes,
    restore_attributes,
    set_mujoco_state,
)

__all__ = ["ActionRepeat", "CameraPixels", "RepeatedDMControlWrapper", "dmc_tasks", "load_dmc", "make_env"]

if not hasattr(np, "in1d"):
    # numpy 2.4 removed in1d; dm_control 1.0.28's quadruped still calls it (sensor lookup),
    # and newer dm_control needs a newer mujoco than metaworld allows. in1d == isin on ravel.
    np.in1d = lambda ar1, ar2, **kw: np.isin(np.ravel(ar1), ar2, **kw)  # type: ignore[attr-defined]


def dmc_tasks() -> dict[str, list[str]]:
    """Domain -> task names for every task of the suite (benchmarking ones plus extras)."""
    tasks: dict[str, list[str]] = {}
    for domain, task in suite.ALL_TASKS:
        tasks.setdefault(domain, []).append(task)
    return tasks


class ActionRepeat(dm_env.Environment):
    """Repeats each action ``repeat`` times, flattens observations and owns the time limit.

    The time limit is counted here in agent steps rather than handed to dm_control in
    seconds: ``time_limit / control_timestep`` is a float division there, and round-off
    makes some episodes one step too long (7 frames at 0.01 s -> limit 7.000000000000001
    -> 8 steps). Suite tasks also carry their own default limits.
    A time-limit end is reported as LAST with discount 1, which TorchRL's
    ``DMControlWrapper`` maps to ``truncated`` (discount 0 means ``terminated``).
    Actions are exposed as float32 in [-1, 1] and rescaled to the physical bounds so that
    every domain looks the same to the actor's tanh output.
    With ``factors``, each step also observes the reward's factors (``REWARD_FACTORS_KEY``: their mean over
    the repeated physics steps; zeros at a reset), for diagnostics: the agent never sees them.
    """

    def __init__(
        self,
        env: control.Environment,
        repeat: int,
        max_agent_steps: int,
        factors: RewardFactors | None = None,
    ) -> None:
        self._env = env
        self._factors = factors
        self._repeat = int(repeat)
        self._max_agent_steps = int(max_agent_steps)
        self._steps = 0
        self._episode_rng: Any = None
        inner = env.action_spec()
        low = np.broadcast_to(np.asarray(inner.minimum, dtype=np.float64), inner.shape)
        high = np.broadcast_to(np.asarray(inner.maximum, dtype=np.float64), inner.shape)
        # lqr declares +-1e10 "bounds", i.e. unbounded: pass [-1, 1] through there instead of
        # stretching it to 1e10 (a plain DreamerV2 NormalizeActions would).
        huge = (np.abs(low) > 1e6) | (np.abs(high) > 1e6)
        self._low = np.where(huge, -1.0, low)
        self._high = np.where(huge, 1.0, high)
        self._action_spec = specs.BoundedArray(
            shape=inner.shape, dtype=np.float32, minimum=-1.0, maximum=1.0, name="action"
        )
        # Iterate over the spec's keys, not the runtime dict, so the layout of the
        # concatenated vector is fixed by the task definition.
        obs_spec = env.observation_spec()
        self._obs_keys = list(obs_spec.keys())
        size = sum(int(np.prod(obs_spec[k].shape)) for k in self._obs_keys)
        self._obs_spec = collections.OrderedDict(
            {OBS_KEY: specs.Array(shape=(size,), dtype=np.float32, name=OBS_KEY)}
        )
        if factors is not None:
            self._obs_spec[REWARD_FACTORS_KEY] = specs.Array(
                shape=(len(factors.names),), dtype=np.float32, name=REWARD_FACTORS_KEY
            )

    # -- what the TorchRL wrapper and the pixels wrapper reach through ---------------------
    @property
    def physics(self) -> Any:
        return self._env.physics

    @property
    def task(self) -> Any:
        # DMControlWrapper seeds by replacing ``task._random``.
        return self._env.task

    @property
    def repeat(self) -> int:
        return self._repeat

    def control_timestep(self) -> float:
        return self._env.control_timestep()

    # -- dm_env API -----------------------------------------------------------------------
    def observation_spec(self) -> collections.OrderedDict:
        return self._obs_spec

    def action_spec(self) -> specs.BoundedArray:
        return self._action_spec

    def reward_spec(self) -> specs.Array:
        return specs.Array(shape=(), dtype=np.float32, name="reward")

    def discount_spec(self) -> specs.BoundedArray:
        return self._env.discount_spec()

    def _flatten(
        self, time_step: dm_env.TimeStep, factors: np.ndarray | None = None
    ) -> collections.OrderedDict:
        obs = time_step.observation
        flat = np.concatenate([np.asarray(obs[k], dtype=np.float32).ravel() for k in self._obs_keys])
        out = collections.OrderedDict({OBS_KEY: flat})
        if self._factors is not None:
            size = len(self._factors.names)
            out[REWARD_FACTORS_KEY] = np.zeros(size, np.float32) if factors is None else factors
        return out

    def episode_rng_state(self) -> Any:
        """The task's random state just before the current episode's reset (for resuming)."""
        return self._episode_rng

    def set_episode_rng_state(self, state: Any) -> None:
        """The next reset then starts the same episode as the one ``state`` was taken from."""
        self._env.task.random.set_state(state)

    def sim_state(self) -> dict[str, Any]:
        """Physics, the task's random state and Python-side episode state (exact mid-episode resume)."""
        physics, task = self._env.physics, self._env.task
        return {
            "mujoco": mujoco_state(physics.model.ptr, physics.data.ptr),
            "task_random": task.random.get_state(),
            "task": plain_attributes(task),
            "steps": self._steps,
            "episode_rng": self._episode_rng,
        }

    def set_sim_state(self, state: dict[str, Any]) -> None:
        physics, task = self._env.physics, self._env.task
        set_mujoco_state(physics.model.ptr, physics.data.ptr, state["mujoco"])
        task.random.set_state(state["task_random"])
        restore_attributes(task, state["task"])
        self._steps, self._episode_rng = state["steps"], state["episode_rng"]

    def reset(self) -> dm_env.TimeStep:
        self._steps = 0
        self._episode_rng = self._env.task.random.get_state()
        time_step = self._env.reset()
        return time_step._replace(observation=self._flatten(time_step))

    def step(self, action: np.ndarray) -> dm_env.TimeStep:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        action = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        discount = 1.0
        factors, repeats = None, 0
        for _ in range(self._repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0
            discount *= time_step.discount if time_step.discount is not None else 1.0
            if self._factors is not None:
                step_factors = self._factors.compute(self._env.physics)
                factors = step_factors if factors is None else factors + step_factors
                repeats += 1
            if time_step.last():
                break
        self._steps += 1
        step_type = time_step.step_type
        if not time_step.last() and self._steps >= self._max_agent_steps:
            step_type = dm_env.StepType.LAST
        return dm_env.TimeStep(
            step_type=step_type,
            reward=np.float32(reward),
            discount=np.float32(discount),
            observation=self._flatten(time_step, None if factors is None else factors / repeats),
        )

    def close(self) -> None:
        self._env.close()


class CameraPixels(pixels.Wrapper):
    """dm_control's pixel wrapper (pixels only), rendering through one camera kept for the env's life.

    ``physics.render`` builds a new ``Camera`` (and allocates its ``MjvScene``) on every call: about a quarter
    of a 64x64 frame's cost on llvmpipe. The picture is the same, pixel for pixel.
    """

    def __init__(self, env: ActionRepeat, *, render_kwargs: dict) -> None:
        # One camera per kind of picture (RGB, segmentation): a scene rendered for segmentation keeps
        # segmentation state that would leak into the next RGB frame.
        self._cameras: dict[bool, Camera] = {}
        super().__init__(env, pixels_only=True, render_kwargs=render_kwargs)
        # The reward's factors (diagnostics, when the env reports them) pass through beside the pixels.
        self._passed = [k for k in env.observation_spec() if k == REWARD_FACTORS_KEY]
        for key in self._passed:
            self._observation_spec[key] = env.observation_spec()[key]

    def render(self, segmentation: bool = False) -> np.ndarray:
        physics = self._env.physics
        camera = self._cameras.get(segmentation)
        # A new physics (a reloaded model) needs new scenes; no DMC task does this, but it is cheap to check.
        if camera is not None and camera._physics is not physics:
            self._free_cameras()
            camera = None
        if camera is None:
            kwargs = self._render_kwargs
            camera = Camera(
                physics, height=kwargs["height"], width=kwargs["width"], camera_id=kwargs.get("camera_id", 0)
            )
            self._cameras[segmentation] = camera
        return camera.render(segmentation=segmentation)

    def _add_pixel_observation(self, time_step: dm_env.TimeStep) -> dm_env.TimeStep:
        observation = collections.OrderedDict({PIXELS_KEY: self.picture()})
        observation.update({key: time_step.observation[key] for key in self._passed})
        return time_step._replace(observation=observation)

    def picture(self) -> np.ndarray:
        """The observation's HWC uint8 picture (subclasses change it)."""
        return self.render()

    def sim_state(self) -> dict[str, Any]:
        return self._env.sim_state()

    def set_sim_state(self, state: dict[str, Any]) -> None:
        self._env.set_sim_state(state)

    def _free_cameras(self) -> None:
        for camera in self._cameras.values():
            camera._scene.free()
        self._cameras.clear()

    def close(self) -> None:
        self._free_cameras()
        super().close()


class RepeatedDMControlWrapper(DMControlWrapper):
    """``DMControlWrapper`` that accepts our dm_env wrapper.

    Upstream only accepts ``control.Environment`` or ``pixels.Wrapper`` instances and raises
    a TypeError for anything else, although it only needs ``physics``, ``task`` and the
    dm_env API.
    """

    def _check_kwargs(self, kwargs: dict) -> None:
        env = kwargs.get("env")
        # Pixel envs hand in a CameraPixels (or DistractedPixels) around an ActionRepeat.
        if not isinstance(env, (ActionRepeat, CameraPixels)):
            raise TypeError(f"expected an ActionRepeat or CameraPixels env, got {type(env)}")

    def _make_specs(self, env: Any) -> None:
        super()._make_specs(env)
        # dm_control's pixels.Wrapper inherits dm_env's default float64 reward_spec instead
        # of forwarding ours, so pixel envs would emit float64 rewards without this.
        self.reward_spec = Unbounded(shape=(*self.batch_size, 1), dtype=torch.float32, device=self.device)


def _parse_task(task: str) -> tuple[str, str]:
    known = dmc_tasks()
    domain, sep, name = task.partition("-")
    if not sep or domain not in known:
        raise ValueError(
            f"Unknown DMC task {task!r}: expected 'domain-task' with domain one of {sorted(known)}."
        )
    if name not in known[domain]:
        raise ValueError(f"Unknown task {name!r} for DMC domain {domain!r}; valid tasks: {known[domain]}.")
    return domain, name


def make_env(
    *,
    task: str = "cheetah-run",
    from_pixels: bool = False,
    image_size: int = 64,
    action_repeat: int = 2,
    time_limit: int = 1000,
    seed: int = 0,
    fast_render: bool = True,
    shadows: bool = True,
    camera_id: int | None = None,
) -> EnvBase:
    """Build a seeded DMC env for TorchRL.

    Args:
        task: ``"domain-task"``, e.g. ``"cheetah-run"`` or ``"ball_in_cup-catch"``.
        from_pixels: observe ``"pixels"`` (uint8, 3 x image_size x image_size) instead of
            ``"observation"`` (float32 vector of the concatenated proprioceptive state).
        image_size: rendered height and width; rendered at this size, never resized.
        action_repeat: physics control steps per agent step; rewards are summed.
        time_limit: episode length in env frames (control steps). An episode lasts
            ``time_limit // action_repeat`` agent steps and then ends as truncated.
        seed: seeds the task's random state (initial states, targets).
        fast_render: no MSAA and 512px shadow maps: ~2.5x faster renders of a picture that
            differs only at anti-aliased edges (mean |diff| < 1 of 255 at 64x64).
        shadows: False turns cast shadows and reflections off (faster; the picture changes).
        camera_id: defaults to 0, or 2 for quadruped (as DreamerV2).

    """
    dm = load_dmc(task, action_repeat, time_limit, image_size, seed, fast_render, shadows)
    domain = task.partition("-")[0]
    cam = camera_id if camera_id is not None else (2 if domain == "quadruped" else 0)
    repeated = ActionRepeat(dm, action_repeat, time_limit // action_repeat, reward_factors.for_task(task))
    if from_pixels:
        # Our pixel wrapper instead of the one TorchRL would add (from_pixels=True): see CameraPixels.
        render_kwargs = {"height": image_size, "width": image_size, "camera_id": cam}
        base = RepeatedDMControlWrapper(
            CameraPixels(repeated, render_kwargs=render_kwargs), from_pixels=False
        )
    else:
        base = RepeatedDMControlWrapper(repeated, from_pixels=False)
    return finish_env(base, from_pixels, seed, repeated)


def load_dmc(
    task: str, action_repeat: int, time_limit: int, image_size: int, seed: int, fast: bool, shadows: bool
) -> control.Environment:
    """Validates the common arguments and loads the dm_control task with its render knobs applied."""
    domain, name = _parse_task(task)
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
    if time_limit < action_repeat:
        raise ValueError(f"time_limit ({time_limit} env frames) must be >= action_repeat ({action_repeat})")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    # dm_control's own limit is disabled; ActionRepeat counts agent steps instead.
    dm = suite.load(domain, name, task_kwargs={"random": seed, "time_limit": float("inf")})
    # The pixel wrapper renders in its constructor, so the knobs must be set first.
    tune_rendering(dm.physics.model, fast=fast, shadows=shadows)
    return dm
