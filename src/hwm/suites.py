"""One entry point for every benchmark suite: ``make_suite_env(suite=..., task=..., ...)``.

Every factory takes the same common arguments (task, from_pixels, image_size, action_repeat, time_limit,
seed, fast_render); suite-specific ones (Atari's ``sticky``, distracted DMC's ``strength`` ...) arrive
through ``options`` and are checked against the factory's signature, so a typo is one clear error.
Factories are imported lazily: DMC runs never import ALE, Atari runs never import Meta-world.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torchrl.envs import EnvBase

__all__ = ["COMMON_ARGS", "SUITES", "make_suite_env", "suite_factory", "suite_options"]

# suite -> "module:function"
SUITES: dict[str, str] = {
    "dmc": "hwm.envs:make_env",
    "distracted_dmc": "hwm.envs_distracted:make_distracted_env",
    "metaworld": "hwm.envs_metaworld:make_metaworld_env",
    "atari": "hwm.envs_atari:make_atari_env",
}
COMMON_ARGS = ("task", "from_pixels", "image_size", "action_repeat", "time_limit", "seed", "fast_render")


def suite_factory(suite: str) -> Callable[..., EnvBase]:
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")
    module, _, name = SUITES[suite].partition(":")
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
