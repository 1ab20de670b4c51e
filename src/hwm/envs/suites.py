"""One entry point for every benchmark suite: ``EnvConfig(suite=..., task=..., ...).make(seed)``.

Every factory takes the same common arguments (task, from_pixels, image_size, action_repeat, time_limit,
seed, fast_render); suite-specific ones (Atari's ``sticky``, distracted DMC's ``strength`` ...) arrive
through ``options`` and are checked against the factory's signature, so a typo is one clear error.
Factories are imported on first use: DMC runs never import ALE, Atari runs never import dm_control or
Meta-world.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchrl.envs import EnvBase

from hwm.envs.atari_scores import ATARI100K_SCORES, atari100k_game
from hwm.envs.common import OBS_KEY, PIXELS_KEY, EnvInfo, probe_env

__all__ = ["COMMON_ARGS", "SUITES", "EnvConfig", "Suite", "make_suite_env", "suite_factory", "suite_options"]

COMMON_ARGS = ("task", "from_pixels", "image_size", "action_repeat", "time_limit", "seed", "fast_render")


def _no_score_range(task: str) -> tuple[float, float] | None:
    return None


def _atari_score_range(task: str) -> tuple[float, float] | None:
    """The (random, human) pair of an Atari 100k game; None for other ROMs."""
    try:
        return ATARI100K_SCORES[atari100k_game(task)]
    except ValueError:
        return None


@dataclass(frozen=True)
class Suite:
    """A suite's env factory (``module:function``, imported on first use) and how its tasks are scored."""

    factory: str
    score_range: Callable[[str], tuple[float, float] | None] = _no_score_range


SUITES: dict[str, Suite] = {
    "dmc": Suite("hwm.envs.dmc:make_env"),
    "distracted_dmc": Suite("hwm.envs.distracted:make_distracted_env"),
    "metaworld": Suite("hwm.envs.metaworld:make_metaworld_env"),
    "atari": Suite("hwm.envs.atari:make_atari_env", _atari_score_range),
}


def _suite(suite: str) -> Suite:
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return SUITES[suite]


def suite_factory(suite: str) -> Callable[..., EnvBase]:
    module, _, name = _suite(suite).factory.partition(":")
    return getattr(importlib.import_module(module), name)


def suite_options(suite: str) -> dict[str, Any]:
    """The suite-specific options and their defaults."""
    return _options(suite_factory(suite))


def _options(factory: Callable[..., EnvBase]) -> dict[str, Any]:
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.name not in COMMON_ARGS}


def make_suite_env(*, suite: str = "dmc", options: Mapping[str, Any] | None = None, **common: Any) -> EnvBase:
    """Builds ``suite``'s env from the common arguments plus the suite's own ``options``."""
    factory = suite_factory(suite)
    options = dict(options or {})
    valid = _options(factory)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)} for suite {suite!r}; valid options: {listed}"
        )
    return factory(**common, **options)


@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines an env of a run but its seed."""

    suite: str = "dmc"
    task: str = "cartpole-balance"
    from_pixels: bool = False
    image_size: int = 64
    action_repeat: int = 2
    time_limit: int = 1000
    fast_render: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def obs_key(self) -> str:
        return PIXELS_KEY if self.from_pixels else OBS_KEY

    @property
    def max_steps(self) -> int:
        """Agent steps of a full episode."""
        return self.time_limit // self.action_repeat

    def make(self, seed: int) -> EnvBase:
        return make_suite_env(
            suite=self.suite,
            options=self.options,
            task=self.task,
            from_pixels=self.from_pixels,
            image_size=self.image_size,
            action_repeat=self.action_repeat,
            time_limit=self.time_limit,
            fast_render=self.fast_render,
            seed=seed,
        )

    def probe(self, seed: int) -> EnvInfo:
        """Builds the env once (which validates the task and options) and reads its facts."""
        env = self.make(seed)
        try:
            return probe_env(env, self.obs_key, _suite(self.suite).score_range(self.task))
        finally:
            env.close()
