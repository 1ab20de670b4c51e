"""Simulator snapshots: everything a training env needs to continue an episode exactly in a new process.

A suite's env exposes ``sim_state()`` / ``set_sim_state(state)`` (:class:`SimState`); :class:`SimSnapshot`,
the last transform of every env (``finish_env``), carries that state in the env's ``state_dict`` as its
``extra_state``, which is what TorchRL's batched envs save and load per worker (``worker0``, ``worker1``
...). The policy's recurrent state and the observation in hand live in the collector's carrier, not here.

MuJoCo's part is the full integration state (positions, velocities, actuator activations, controls, mocap,
warm start, time) plus the model fields that tasks change at reset (DMC's reacher and finger move their
target, Meta-world its goal site), then ``mj_forward`` so derived quantities match the state.
Python-side episode state (a task's goal, Meta-world's previous observation, step counters) is snapshot as
plain attributes: numbers, strings, numpy arrays and containers of them.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torchrl.envs import Transform

__all__ = [
    "MODEL_FIELDS",
    "SimSnapshot",
    "SimState",
    "mujoco_state",
    "plain_attributes",
    "restore_attributes",
    "set_mujoco_state",
]

# Model fields a task may change when it starts an episode (targets, goals, colours); copied both ways.
MODEL_FIELDS = (
    "body_pos",
    "body_quat",
    "body_mass",
    "geom_pos",
    "geom_quat",
    "geom_size",
    "geom_rgba",
    "site_pos",
    "site_quat",
    "site_size",
    "site_rgba",
    "mat_rgba",
    "cam_pos",
    "cam_quat",
)


@runtime_checkable
class SimState(Protocol):
    """An env whose whole simulator state can be read and put back (exact mid-episode resume)."""

    def sim_state(self) -> dict[str, Any]: ...

    def set_sim_state(self, state: dict[str, Any]) -> None: ...


class SimSnapshot(Transform):
    """Carries ``sim``'s state in the env's ``state_dict`` (``extra_state``), per worker in batched envs."""

    def __init__(self, sim: SimState) -> None:
        super().__init__()
        self.sim = sim

    def get_extra_state(self) -> dict[str, Any]:
        return self.sim.sim_state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sim.set_sim_state(state)


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, np.ndarray, np.generic)):
        return not (isinstance(value, np.ndarray) and value.dtype == object)
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def plain_attributes(obj: Any) -> dict[str, Any]:
    """Copies of ``obj``'s plain instance attributes (episode state kept in Python)."""
    return {k: copy.deepcopy(v) for k, v in vars(obj).items() if _plain(v)}


def restore_attributes(obj: Any, state: dict[str, Any]) -> None:
    """Puts back what :func:`plain_attributes` took (arrays in place where shapes allow, so views stay views)."""
    for key, value in state.items():
        current = vars(obj).get(key)
        if isinstance(current, np.ndarray) and isinstance(value, np.ndarray) and current.shape == value.shape:
            current[...] = value
        else:
            setattr(obj, key, copy.deepcopy(value))


def mujoco_state(model: Any, data: Any) -> dict[str, Any]:
    """MuJoCo's integration state and the task-changed model fields (``mujoco.MjModel`` / ``MjData``)."""
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    return {"integration": state, "model": {f: getattr(model, f).copy() for f in MODEL_FIELDS}}


def set_mujoco_state(model: Any, data: Any, state: dict[str, Any]) -> None:
    import mujoco

    for field, value in state["model"].items():
        getattr(model, field)[...] = value
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(model, data, state["integration"], spec)
    # Derived quantities (body positions, sensor values) from the state, as the stepping left them (DMC's
    # Euler step finishes a step begun by the last one); mj_forward also rewrites part of the state (the
    # solver's warm start, at 1e-14), so the state is set once more after it.
    mujoco.mj_forward(model, data)
    mujoco.mj_setState(model, data, state["integration"], spec)
