"""The agent's recurrent policy as a TorchRL module: filters observations through the RSSM, then acts."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Unbounded
from torchrl.envs import TensorDictPrimer
from torchrl.envs.utils import ExplorationType, exploration_type

from hwm.models.actor_critic import ActorCritic
from hwm.models.world_model import WorldModel

STATE_KEYS: tuple[str, str, str] = ("policy_deter", "policy_stoch", "policy_action")


class DreamerPolicy(TensorDictModuleBase):
    """Reads the observation and the carried latent state, writes ``action`` and the next latent state.

    The latent (deter, stoch, last action) rides in the tensordict under ``STATE_KEYS``: the policy writes
    them to ``("next", key)`` and the env's step moves them to the root, as TorchRL's LSTM modules do.
    ``is_init`` (from ``InitTracker``) restarts it from the world model's initial state at episode starts.
    Sampled actions when the exploration type is RANDOM (collection), the actor's mode otherwise.
    ``eval_sample`` picks what evaluation uses (:attr:`eval_exploration`): DreamerV3's agent samples
    there too, DreamerV2's takes the mode.
    """

    def __init__(
        self, world_model: WorldModel, actor_critic: ActorCritic, *, eval_sample: bool = False
    ) -> None:
        super().__init__()
        self.world_model = world_model
        self.actor_critic = actor_critic
        self.eval_sample = eval_sample
        self.in_keys = [world_model.obs_key, "is_init", *STATE_KEYS]
        self.out_keys = ["action", *[("next", k) for k in STATE_KEYS]]

    @property
    def eval_exploration(self) -> ExplorationType:
        """The exploration type evaluation episodes run under."""
        return ExplorationType.RANDOM if self.eval_sample else ExplorationType.DETERMINISTIC

    def make_primer(self) -> TensorDictPrimer:
        """The env transform that creates the latent keys at reset (their values are replaced at is_init)."""
        rssm = self.world_model.rssm
        shapes = (rssm.deter_dim, rssm.stoch_dim, self.world_model.action_dim)
        return TensorDictPrimer(
            {
                key: Unbounded(shape=(n,), dtype=torch.float32)
                for key, n in zip(STATE_KEYS, shapes, strict=True)
            },
            reset_key="_reset",
        )

    @torch.no_grad()
    def forward(self, td: TensorDictBase) -> TensorDictBase:
        wm = self.world_model
        device = next(wm.parameters()).device
        # The collector runs inside the training step, i.e. under Lightning's autocast when the precision
        # is mixed; at batch 1 the casts cost more than the low-precision kernels save (measured on CPU:
        # +4.5 ms per agent step), so acting stays in float32.
        with torch.autocast(device.type, enabled=False):
            return self._act(td, device)

    def _act(self, td: TensorDictBase, device: torch.device) -> TensorDictBase:
        wm = self.world_model
        obs = _to_device(td.get(wm.obs_key), device)
        # Unbatched envs give [obs_shape]; add a batch dim for the networks and drop it after.
        unbatched = obs.dim() == len(wm.obs_shape)
        if unbatched:
            obs = obs.unsqueeze(0)
        deter, stoch, prev_action = (self._state(td, k, obs.shape[0], device) for k in STATE_KEYS)
        is_init = td.get("is_init").to(device).reshape(obs.shape[0], 1)
        explore = exploration_type() == ExplorationType.RANDOM
        # The latent is sampled in evaluation too, as DreamerV2 does (its eval_state_mean=False): the
        # networks only ever saw sampled latents.
        state, _ = wm.rssm.obs_step((deter, stoch), prev_action, wm.encode(obs), is_first=is_init)
        dist = self.actor_critic.action_dist(wm.feat(state))
        action = dist.sample() if explore else dist.mode()
        outputs = {
            "action": action,
            "policy_deter": state[0],
            "policy_stoch": state[1],
            "policy_action": action,
        }
        for key, value in outputs.items():
            value = value.float().squeeze(0) if unbatched else value.float()
            td.set(key if key == "action" else ("next", key), value.to(td.device or "cpu"))
        return td

    def _state(self, td: TensorDictBase, key: str, batch: int, device: torch.device) -> torch.Tensor:
        return _to_device(td.get(key), device).reshape(batch, -1)


def _to_device(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-GPU copies from pinned memory without blocking (the copy overlaps the next launches); on the
    CPU, the tensor itself."""
    if device.type != "cuda" or value.device.type != "cpu":
        return value.to(device)
    return value.pin_memory().to(device, non_blocking=True)
