"""The base (DreamerV2 or DreamerV3) and model-size presets behind ``model.base`` and ``model.size``.

A preset only supplies defaults: the classes' own typed options (``model.world_model.init_args.deter``, ...)
still override them. The CLI reads the two keys before parsing (``defaults``) so that the presets show up
in ``--print_config`` and in the logged config; the agent resolves the same tables when built from Python.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from hwm.models.actor_critic import ActorCritic
from hwm.models.actor_critic_v3 import ActorCriticV3
from hwm.models.world_model import WorldModel
from hwm.models.world_model_v3 import WorldModelV3

Base = Literal["dreamerv2", "dreamerv3"]
Size = Literal["XS", "S", "M", "L", "XL"]
BASE_NAMES: tuple[str, ...] = get_args(Base)
SIZE_NAMES: tuple[str, ...] = get_args(Size)

CLASSES: dict[str, tuple[type[WorldModel], type[ActorCritic]]] = {
    "dreamerv2": (WorldModel, ActorCritic),
    "dreamerv3": (WorldModelV3, ActorCriticV3),
}


def class_path(cls: type) -> str:
    """The import path jsonargparse writes for a class (``model.world_model.class_path``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


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


def size_options(size: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(world-model options, actor-critic options) of a size; empty for None (the classes' defaults)."""
    check("dreamerv2", size)
    if size is None:
        return {}, {}
    deter, depth, units, layers = _SIZE_TABLE[size]
    world_model: dict[str, Any] = {
        "deter": deter,
        "hidden": units,
        "stoch": 32,
        "classes": 32,
        "cnn_depth": depth,
        "mlp_units": units,
        "mlp_layers": layers,
    }
    return world_model, {"units": units, "layers": layers}


def optimizer_settings(base: str, **given: float | None) -> dict[str, float]:
    """The base's optimizer table with every setting given (not None) put over it.

    Left unset, the world model shares the actor-critic's epsilon and clip (DreamerV2's one setting).
    """
    table = OPTIM[base]
    settings: dict[str, Any] = {k: float(v) if v is not None else table.get(k) for k, v in given.items()}
    if settings.get("model_eps") is None:
        settings["model_eps"] = settings["eps"]
    if settings.get("model_grad_clip") is None:
        settings["model_grad_clip"] = settings["grad_clip"]
    return settings


def defaults(base: Any, size: Any) -> dict[str, Any]:
    """Parser defaults (dotted keys) for a base and size; ValueError naming the valid choices."""
    check(base, size)
    world_model, actor_critic = size_options(size)
    wm_class, ac_class = CLASSES[base]
    out: dict[str, Any] = {
        "model.world_model": {"class_path": class_path(wm_class), "init_args": world_model},
        "model.actor_critic": {"class_path": class_path(ac_class), "init_args": actor_critic},
    }
    out.update({f"model.{k}": v for k, v in OPTIM[base].items()})
    out["model.eval_sample"] = EVAL_SAMPLE[base]
    out.update({f"data.{k}": v for k, v in REPLAY[base].items()})
    return out
