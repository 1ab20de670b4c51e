"""DreamerV3 actor-critic (the 2023 version HarmonyDream(V3) builds on), on the shared imagination code.

What differs from DreamerV2's: LayerNorm + SiLU blocks; a two-hot symlog critic (255 bins, zero-initialised)
whose targets come from the online critic and which is regularised towards the slow critic's prediction; the
slow critic an EMA (2% per update); advantages divided by the percentile return scale max(1, S); actor std in
[0.1, 1] and 1% unimix for discrete actions; entropy bonus 3e-4; discount 1 - 1/333.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from hwm.models.actor_critic import ActionDist, ActorCritic
from hwm.models.distributions import TwoHot
from hwm.models.losses import lambda_return
from hwm.models.networks import frozen
from hwm.models.world_model import Starts, WorldModel

CRITIC_BINS = 255


class ActorCriticV3(ActorCritic):
    """DreamerV3's actor and critic; the defaults are DreamerV3's (S size; ``model.size`` picks another).

    Args:
        feat_dim: size of the world model's feature (deter + stoch), filled in by the agent.
        action_dim: action size, from the env.
        discrete: one-hot actions, from the env.
        units: width of the actor and critic MLPs.
        layers: hidden layers of the actor and critic MLPs.
        horizon: imagination length.
        discount: per-step discount (DreamerV3: 1 - 1/333), times the predicted continue probability.
        lambda_: lambda of the TD(lambda) targets.
        actor_entropy: entropy bonus of the actor.
        actor_grad: ``dynamics`` (backprop through the model), ``reinforce``, or ``auto`` (by action type).
        min_std: lower bound of the continuous actor's standard deviation.
        max_std: upper bound of the continuous actor's standard deviation.
        unimix: share of the uniform distribution mixed into discrete actions.
        slow_critic_every: updates between moves of the slow critic.
        slow_critic_fraction: how far each move takes the slow critic towards the critic.
        slow_reg: weight of the critic's regulariser towards the slow critic's prediction.
        return_norm: divide advantages by max(1, EMA of the 5-95 percentile range of returns) (off: ablation).
        imag_starts: imagine from this many random posterior states (0: all B x T of them).
    """

    _norm = True
    _act = nn.SiLU
    _critic_out = CRITIC_BINS
    _zero_critic = True

    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        discrete: bool = False,
        *,
        units: int = 512,
        layers: int = 2,
        horizon: int = 15,
        discount: float = 1 - 1 / 333,
        lambda_: float = 0.95,
        actor_entropy: float = 3e-4,
        actor_grad: Literal["auto", "dynamics", "reinforce"] = "auto",
        min_std: float = 0.1,
        max_std: float = 1.0,
        unimix: float = 0.01,
        slow_critic_every: int = 1,
        slow_critic_fraction: float = 0.02,
        slow_reg: float = 1.0,
        return_norm: bool = True,
        imag_starts: int = 0,
    ) -> None:
        if not 0 < min_std < max_std:
            raise ValueError(f"need 0 < min_std < max_std; got {min_std}, {max_std}")
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1); got {unimix}")
        super().__init__(
            feat_dim,
            action_dim,
            discrete,
            units=units,
            layers=layers,
            horizon=horizon,
            discount=discount,
            lambda_=lambda_,
            actor_entropy=actor_entropy,
            actor_grad=actor_grad,
            min_std=min_std,
            slow_critic_every=slow_critic_every,
            slow_critic_fraction=slow_critic_fraction,
            return_norm=return_norm,
            imag_starts=imag_starts,
        )
        self.max_std, self.unimix, self.slow_reg = max_std, unimix, slow_reg
        self.twohot = TwoHot(CRITIC_BINS)

    def action_dist(self, feat: Tensor) -> ActionDist:
        return ActionDist(
            self.actor(feat),
            discrete=self.discrete,
            min_std=self.min_std,
            max_std=self.max_std,
            unimix=self.unimix,
        )

    def loss(self, world_model: WorldModel, start: Starts) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Actor and critic losses from imagination starting at (detached) posterior states."""
        feats, entropy, log_prob, reward, discount, weight = self._rollout(world_model, start)
        # DreamerV3 bootstraps from the online critic (the slow one only regularises it); its parameters
        # are not the actor's to train, but the returns carry the actor's gradient through the features.
        with frozen(self.critic):
            value = self.twohot.mean(self.critic(feats))  # [H+1, N]
        target = lambda_return(reward, value, discount, lambda_=self.lambda_)  # [H, N]

        if self.return_norm:
            self.retnorm.update(target)
        scale = self.retnorm.scale() if self.return_norm else torch.ones((), device=target.device)
        advantage = (target - value[:-1]) / scale
        if self.actor_grad == "dynamics":
            objective = advantage
        else:
            objective = log_prob * advantage.detach()
        actor_loss = -(weight * (objective + self.actor_entropy * entropy)).mean()

        logits = self.critic(feats[:-1].detach())
        with torch.no_grad():
            slow = self.twohot.mean(self.slow_critic(feats[:-1].detach()))
        critic_nll = self.twohot.nll(logits, target.detach())
        reg = self.twohot.nll(logits, slow)
        critic_loss = (weight * (critic_nll + self.slow_reg * reg)).mean()
        metrics = {
            "imag_return": target[0].mean().detach(),
            "imag_reward": reward.mean().detach(),
            "actor_entropy": entropy.mean().detach(),
            "value": value[:-1].mean().detach(),
            "return_scale": scale.detach().clone(),
            "return_low": self.retnorm.low.detach().clone(),
            "return_high": self.retnorm.high.detach().clone(),
        }
        return {"actor": actor_loss, "critic": critic_loss}, metrics
