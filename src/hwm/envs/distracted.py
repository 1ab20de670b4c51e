"""Distracted DMC: DMC pixels whose background (sky and floor) shows a procedurally generated moving video.

Each agent step renders the RGB picture and a segmentation of the same camera; pixels that belong to no
geom (the skybox) or to a plane geom (the floor) are background and are blended with the next frame of a
distractor video: ``out = (1 - strength) * picture + strength * video`` there, the picture elsewhere.
``strength=1`` replaces the background outright, ``0`` is plain DMC (at the cost of the extra render).
No dataset is downloaded: the videos are generated here, seeded with the env.

Distractors:
  ``shapes``: coloured discs and squares that drift and bounce over a slowly changing colour field.
  ``noise``: smooth colour noise (a coarse random grid, upsampled) that morphs from one grid to the next.
"""

from __future__ import annotations

from typing import Any, Literal

import dm_env
import numpy as np
from torchrl.envs import EnvBase

from hwm.envs.common import finish_env
from hwm.envs.dmc import ActionRepeat, CameraPixels, RepeatedDMControlWrapper, load_dmc
from hwm.envs.snapshot import plain_attributes, restore_attributes

__all__ = ["DISTRACTORS", "DistractedPixels", "NoiseVideo", "ShapesVideo", "make_distracted_env"]

Distractor = Literal["shapes", "noise"]
DISTRACTORS: tuple[str, ...] = ("shapes", "noise")
_GEOM_PLANE = 0  # mjtGeom.mjGEOM_PLANE
_OBJ_GEOM = 5  # mjtObj.mjOBJ_GEOM


class ShapesVideo:
    """Coloured shapes moving at constant speed and bouncing off the borders, over a drifting colour field."""

    def __init__(self, size: int, rng: np.random.Generator, count: int = 6) -> None:
        self.size, self.rng, self.count = size, rng, count
        grid = np.arange(size, dtype=np.float32) + 0.5
        self._yy, self._xx = np.meshgrid(grid, grid, indexing="ij")
        self.reset()

    def reset(self) -> None:
        n, s = self.count, self.size
        self.pos = self.rng.uniform(0, s, size=(n, 2)).astype(np.float32)
        self.vel = self.rng.uniform(-0.06, 0.06, size=(n, 2)).astype(np.float32) * s
        self.radius = self.rng.uniform(0.08, 0.2, size=n).astype(np.float32) * s
        self.color = self.rng.uniform(0, 255, size=(n, 3)).astype(np.float32)
        self.square = self.rng.random(n) < 0.5
        self.bg = self.rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        self.phase = float(self.rng.uniform(0, 2 * np.pi))

    def next(self) -> np.ndarray:
        self.pos += self.vel
        for axis in range(2):  # bounce
            low, high = self.pos[:, axis] < 0, self.pos[:, axis] > self.size
            self.vel[low | high, axis] *= -1
            self.pos[:, axis] = np.clip(self.pos[:, axis], 0, self.size)
        self.phase += 0.05
        mix = 0.5 + 0.5 * np.sin(self.phase + self._xx / self.size * np.pi)
        frame = self.bg[0] * mix[..., None] + self.bg[1] * (1 - mix[..., None])
        for (y, x), r, color, square in zip(self.pos, self.radius, self.color, self.square, strict=True):
            dy, dx = np.abs(self._yy - y), np.abs(self._xx - x)
            inside = np.maximum(dy, dx) < r if square else dy * dy + dx * dx < r * r
            frame[inside] = color
        return frame


class NoiseVideo:
    """Smooth colour noise: a coarse random RGB grid, bilinearly upsampled, morphing towards a new grid."""

    def __init__(self, size: int, rng: np.random.Generator, cells: int = 6, frames_per_key: int = 10) -> None:
        self.size, self.rng, self.cells, self.frames_per_key = size, rng, cells, frames_per_key
        # Bilinear upsampling from (cells x cells) to (size x size) as two small matrices.
        pos = np.linspace(0, cells - 1, size, dtype=np.float32)
        low = np.minimum(pos.astype(int), cells - 2)
        frac = pos - low
        self._up = np.zeros((size, cells), np.float32)
        self._up[np.arange(size), low] = 1 - frac
        self._up[np.arange(size), low + 1] = frac
        self.reset()

    def _key(self) -> np.ndarray:
        return self.rng.uniform(0, 255, size=(self.cells, self.cells, 3)).astype(np.float32)

    def reset(self) -> None:
        self.keys = (self._key(), self._key())
        self.t = 0

    def next(self) -> np.ndarray:
        self.t += 1
        if self.t > self.frames_per_key:
            self.keys, self.t = (self.keys[1], self._key()), 1
        w = self.t / self.frames_per_key
        coarse = (1 - w) * self.keys[0] + w * self.keys[1]
        # (3, cells, cells) -> (3, size, size) with two small matmuls, then HWC.
        return (self._up @ coarse.transpose(2, 0, 1) @ self._up.T).transpose(1, 2, 0)


class DistractedPixels(CameraPixels):
    """dm_control's pixel wrapper with the background blended with a distractor video."""

    def __init__(
        self,
        env: ActionRepeat,
        *,
        render_kwargs: dict,
        distractor: Distractor,
        strength: float,
        seed: int,
    ) -> None:
        super().__init__(env, render_kwargs=render_kwargs)
        self._strength = float(strength)
        self._distractor = distractor
        model = env.physics.model
        # Background geoms: planes (floors). The skybox shows as "no object" (id -1).
        self._background_geoms = np.flatnonzero(model.geom_type == _GEOM_PLANE)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        # Its own stream, so the distractor never shifts the task's random state (or the other way round).
        rng = np.random.default_rng([seed, 1])
        size = self._render_kwargs["height"]
        self.video = ShapesVideo(size, rng) if self._distractor == "shapes" else NoiseVideo(size, rng)

    def background_mask(self) -> np.ndarray:
        seg = self.render(segmentation=True)
        ids, types = seg[..., 0], seg[..., 1]
        return (ids == -1) | ((types == _OBJ_GEOM) & np.isin(ids, self._background_geoms))

    def sim_state(self) -> dict[str, Any]:
        """The DMC state plus the distractor video's (its generator and the moving shapes / noise keys)."""
        video = self.video
        return {
            **super().sim_state(),
            "video": plain_attributes(video),
            "video_rng": video.rng.bit_generator.state,
        }

    def set_sim_state(self, state: dict[str, Any]) -> None:
        super().set_sim_state(state)
        restore_attributes(self.video, state["video"])
        self.video.rng.bit_generator.state = state["video_rng"]

    def reset(self) -> dm_env.TimeStep:
        self.video.reset()
        return super().reset()

    def picture(self) -> np.ndarray:
        picture = self.render()
        if self._strength > 0:
            mask = self.background_mask()[..., None]
            blend = (1 - self._strength) * picture + self._strength * self.video.next()
            picture = np.where(mask, np.clip(blend, 0, 255).astype(np.uint8), picture)
        return picture


class _DistractedWrapper(RepeatedDMControlWrapper):
    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._env.reseed(seed)
        super()._set_seed(seed)


def make_distracted_env(
    *,
    task: str = "cheetah-run",
    from_pixels: bool = True,
    image_size: int = 64,
    action_repeat: int = 2,
    time_limit: int = 1000,
    seed: int = 0,
    fast_render: bool = True,
    shadows: bool = True,
    distractor: Distractor = "shapes",
    strength: float = 1.0,
) -> EnvBase:
    """A seeded distracted-DMC env (pixels only); DMC arguments as :func:`hwm.envs.dmc.make_env`.

    Args:
        distractor: ``shapes`` or ``noise`` (see the module docstring).
        strength: blend weight of the video on background pixels, in [0, 1].
    """
    if not from_pixels:
        raise ValueError(
            "distracted_dmc is pixels only (the distractors live in the picture): set from_pixels"
        )
    if distractor not in DISTRACTORS:
        raise ValueError(f"Unknown distractor {distractor!r}; valid distractors: {', '.join(DISTRACTORS)}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"distractor strength must be in [0, 1], got {strength}")
    dm = load_dmc(task, action_repeat, time_limit, image_size, seed, fast_render, shadows)
    cam = 2 if task.startswith("quadruped-") else 0
    repeated = ActionRepeat(dm, action_repeat, time_limit // action_repeat)
    distracted = DistractedPixels(
        repeated,
        render_kwargs={"height": image_size, "width": image_size, "camera_id": cam},
        distractor=distractor,
        strength=strength,
        seed=seed,
    )
    base = _DistractedWrapper(distracted, from_pixels=False)
    return finish_env(base, True, seed, distracted)
