"""The module paths a recorded config names its classes by, brought up to date.

Checkpoints (and the MLflow params of their runs) written before hwm's package layout name the old module
paths of the world-model and actor-critic classes; a resume and ``hwm compare`` read them through this.
Imports nothing: ``hwm compare`` uses it without loading torch.
"""

from __future__ import annotations

# Class paths that configs (checkpoints, MLflow params) recorded before hwm's package layout.
LEGACY_CLASS_PATHS = {
    "hwm.world_model.WorldModel": "hwm.models.world_model.WorldModel",
    "hwm.world_model_v3.WorldModelV3": "hwm.models.world_model_v3.WorldModelV3",
    "hwm.actor_critic.ActorCritic": "hwm.models.actor_critic.ActorCritic",
    "hwm.actor_critic_v3.ActorCriticV3": "hwm.models.actor_critic_v3.ActorCriticV3",
}


def upgrade_class_paths(text: str) -> str:
    """A recorded config (or param value) with its classes' old module paths replaced by today's."""
    for old, new in LEGACY_CLASS_PATHS.items():
        text = text.replace(old, new)
    return text
