"""What every suite shares: observation keys, the last transforms of an env, MuJoCo render knobs, and the
facts about an env that the rest of hwm needs (``EnvInfo``).

Importing this module imports no simulator: Atari runs never load dm_control or MuJoCo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torchrl.data import Categorical, OneHot
from torchrl.envs import Compose, EnvBase, InitTracker, PermuteTransform, Transform, TransformedEnv

from hwm.envs.snapshot import SimSnapshot, SimState

OBS_KEY = "observation"
PIXELS_KEY = "pixels"
SUCCESS_KEY = "success"  # envs with a success signal (Meta-world) report it per step, 1.0 once reached


@dataclass(frozen=True)
class EnvInfo:
    """What the agent and the data module need to know about an env.

    ``score_range`` is the (random, human) score pair of a game for human-normalised scores (Atari), else
    None; ``has_success`` says whether the env reports ``success`` (Meta-world).
    """

    obs_shape: tuple[int, ...]
    action_dim: int
    discrete: bool
    has_success: bool = False
    score_range: tuple[float, float] | None = None

    @property
    def obs_key(self) -> str:
        return PIXELS_KEY if len(self.obs_shape) == 3 else OBS_KEY

    def normalized(self, score: float) -> float:
        """Human-normalised score, (score - random) / (human - random)."""
        assert self.score_range is not None, "only envs with a score range normalise scores"
        random, human = self.score_range
        return (score - random) / (human - random)


def probe_env(env: EnvBase, obs_key: str, score_range: tuple[float, float] | None = None) -> EnvInfo:
    """Reads an env's specs into an ``EnvInfo`` (the env is not stepped)."""
    action_spec = env.action_spec
    return EnvInfo(
        obs_shape=tuple(env.observation_spec[obs_key].shape),
        action_dim=int(action_spec.shape[-1]),
        discrete=isinstance(action_spec, (OneHot, Categorical)),
        has_success=SUCCESS_KEY in env.observation_spec.keys(),
        score_range=score_range,
    )


@runtime_checkable
class EpisodeRng(Protocol):
    """An env that can snapshot the randomness an episode starts from and replay it (for resuming)."""

    def episode_rng_state(self) -> Any: ...

    def set_episode_rng_state(self, state: Any) -> None: ...


def finish_env(base: EnvBase, from_pixels: bool, seed: int, sim: SimState) -> EnvBase:
    """The transforms every suite's env gets: CHW pixels, ``is_init``, ``sim``'s snapshot in the state
    dict (:mod:`hwm.envs.snapshot`); seeded."""
    transforms: list[Transform] = []
    if from_pixels:
        # HWC -> CHW as a view; stays uint8 (4x smaller replay than float).
        transforms.append(PermuteTransform((-1, -3, -2), in_keys=[PIXELS_KEY]))
    transforms.append(InitTracker())
    transforms.append(SimSnapshot(sim))
    env = TransformedEnv(base, Compose(*transforms))
    env.set_seed(seed)
    return env


def tune_rendering(model: Any, *, fast: bool, shadows: bool) -> None:
    """MuJoCo render knobs shared by every MuJoCo suite; must run before the first render.

    ``fast``: no MSAA and 512px shadow maps (the picture differs only at anti-aliased edges).
    ``shadows=False``: no cast shadows and no reflections (the floor mirror image): faster again, but the
    picture changes (no shadow under the body, a matte floor).
    """
    if fast:
        # Read when the GL context is created, i.e. at the first render.
        model.vis.quality.offsamples = 0
        model.vis.quality.shadowsize = 512
    if not shadows:
        model.light_castshadow[:] = 0
        model.mat_reflectance[:] = 0.0
