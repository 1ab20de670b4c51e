"""The base (DreamerV2 or DreamerV3) and model-size presets behind ``model.base`` and ``model.size``.

A preset only supplies defaults: the classes' own typed options (``model.world_model.init_args.deter``, ...)
still override them. The CLI reads the two keys before parsing (``cli_defaults``) so that the presets show up
in ``--print_config`` and in the logged config; the agent resolves the same tables when built from Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

Base = Literal["dreamerv2", "dreamerv3"]
Size = Literal["XS", "S", "M", "L", "XL"]
BASE_NAMES: tuple[str, ...] = get_args(Base)
SIZE_NAMES: tuple[str, ...] = get_args(Size)

CLASSES: dict[str, tuple[str, str]] = {
    "dreamerv2": ("hwm.world_model.WorldModel", "hwm.actor_critic.ActorCritic"),
    "dreamerv3": ("hwm.world_model_v3.WorldModelV3", "hwm.actor_critic_v3.ActorCriticV3"),
}

# Optimizer settings of each base; model_eps / model_grad_clip left out (or null) follow eps / grad_clip.
# DreamerV2: Adam, 1e-5 eps, 1e-6 (L2) weight decay, clip 100 everywhere, with
# HarmonyDream's DMC model lr 3e-4. DreamerV3: model lr 1e-4, eps 1e-8, clip 1000; actor/critic lr 3e-5,
# eps 1e-5, clip 100; no weight decay.
OPTIM: dict[str, dict[str, float]] = {
    "dreamerv2": {
        "model_lr": 3e-4,
        "actor_lr": 8e-5,
        "critic_lr": 8e-5,
        "eps": 1e-5,
        "weight_decay": 1e-6,
        "grad_clip": 100.0,
    },
    "dreamerv3": {
        "model_lr": 1e-4,
        "actor_lr": 3e-5,
        "critic_lr": 3e-5,
        "model_eps": 1e-8,
        "eps": 1e-5,
        "weight_decay": 0.0,
        "model_grad_clip": 1000.0,
        "grad_clip": 100.0,
    },
}

# How evaluation acts: DreamerV3's agent samples ('eval' mode), DreamerV2's takes the actor's mode.
EVAL_SAMPLE: dict[str, bool] = {"dreamerv2": False, "dreamerv3": True}

# How each base's replay draws its windows (``data.*``): DreamerV2 inside finished episodes, DreamerV3 from
# the whole stream, across episode boundaries, the episode in progress included.
REPLAY: dict[str, dict[str, bool]] = {
    "dreamerv2": {"cross_episodes": False, "ongoing": False},
    "dreamerv3": {"cross_episodes": True, "ongoing": True},
}

# DreamerV3's model sizes (paper v1, Table B.1): GRU size, CNN depth, MLP width and layers; 32 x 32 latents.
_SIZE_TABLE: dict[str, tuple[int, int, int, int]] = {
    #      deter, cnn_depth, units, layers
    "XS": (256, 24, 256, 1),
    "S": (512, 32, 512, 2),
    "M": (1024, 48, 640, 3),
    "L": (2048, 64, 768, 4),
    "XL": (4096, 96, 1024, 5),
}


def check(base: str, size: str | None) -> None:
    if base not in BASE_NAMES:
        raise ValueError(f"model.base must be one of {', '.join(BASE_NAMES)}; got {base!r}")
    if size is not None and size not in SIZE_NAMES:
        raise ValueError(f"model.size must be one of {', '.join(SIZE_NAMES)} (or null); got {size!r}")


def size_options(size: str | None) -> tuple[dict[str, int], dict[str, int]]:
    """(world-model options, actor-critic options) of a size; empty for None (the classes' defaults)."""
    check("dreamerv2", size)
    if size is None:
        return {}, {}
    deter, depth, units, layers = _SIZE_TABLE[size]
    world_model = {
        "deter": deter,
        "hidden": units,
        "stoch": 32,
        "classes": 32,
        "cnn_depth": depth,
        "mlp_units": units,
        "mlp_layers": layers,
    }
    return world_model, {"units": units, "layers": layers}


def _selected(args: Sequence[str]) -> tuple[Any, Any]:
    """The last ``model.base`` / ``model.size`` given by config files or flags, in command-line order."""
    base: Any = "dreamerv2"
    size: Any = None
    args = list(args)
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if key == "--config":
            path = Path(value)
            model = (yaml.safe_load(path.read_text()) or {}).get("model") if path.is_file() else None
            if isinstance(model, dict):
                base = model.get("base", base)
                size = model.get("size", size)
        elif key == "--model.base":
            base = value
        elif key == "--model.size":
            size = None if value in ("null", "None", "") else value
    return base, size


def cli_defaults(args: Sequence[str]) -> dict[str, Any]:
    """Parser defaults for the base and size selected in ``args``; ValueError naming the valid choices."""
    base, size = _selected(args)
    check(base, size)
    world_model, actor_critic = size_options(size)
    wm_class, ac_class = CLASSES[base]
    defaults: dict[str, Any] = {
        "model.world_model": {"class_path": wm_class, "init_args": world_model},
        "model.actor_critic": {"class_path": ac_class, "init_args": actor_critic},
    }
    defaults.update({f"model.{k}": v for k, v in OPTIM[base].items()})
    defaults["model.eval_sample"] = EVAL_SAMPLE[base]
    defaults.update({f"data.{k}": v for k, v in REPLAY[base].items()})
    return defaults
