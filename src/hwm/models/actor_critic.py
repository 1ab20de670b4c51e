"""DreamerV2 actor-critic learning in imagination (``hwm.models.actor_critic_v3`` extends it to DreamerV3)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import ClassVar, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal, OneHotCategorical
from torchrl.modules import TruncatedNormal

from hwm.models.distributions import unimix_logits
from hwm.models.losses import lambda_return
from hwm.models.networks import Blocks, mlp
from hwm.models.world_model import Starts, WorldModel

# DreamerV2 keeps truncated-normal samples this far inside [-1, 1] (straight-through), so no action is
# exactly on a bound, where the density's log would be -inf.
TRUNC_MARGIN = 1e-6


class ActionDist:
    """Actions in [-1, 1] (continuous) or one-hot (discrete), with rsample, log_prob, entropy and mode.

    Continuous actions are DreamerV2's truncated normal on [-1, 1] around tanh(mean) with std
    2 sigmoid(x/2) + min_std (sampled by inverse CDF, TorchRL's ``TruncatedNormal``), or with ``max_std``
    DreamerV3's normal around tanh(mean) with std (max_std - min_std) sigmoid(x + 2) + min_std, whose
    samples are clipped to [-1, 1] (straight-through) as the env would clip them. ``unimix`` mixes a
    uniform share into discrete actions.
    """

    def __init__(
        self,
        out: Tensor,
        *,
        discrete: bool,
        min_std: float,
        max_std: float | None = None,
        unimix: float = 0.0,
    ) -> None:
        self.discrete = discrete
        self.truncated = not discrete and max_std is None
        out = out.float()
        self.dist: Distribution
        if discrete:
            self.dist = OneHotCategorical(logits=unimix_logits(out, unimix), validate_args=False)
        else:
            mean, std = out.chunk(2, -1)
            self.loc = torch.tanh(mean)
            if max_std is None:  # self.truncated
                std = 2.0 * torch.sigmoid(std / 2.0) + min_std
                self.dist = TruncatedNormal(self.loc, std, low=-1.0, high=1.0)
            else:
                std = (max_std - min_std) * torch.sigmoid(std + 2.0) + min_std
                self.dist = Normal(self.loc, std, validate_args=False)

    @property
    def _categorical(self) -> OneHotCategorical:
        assert isinstance(self.dist, OneHotCategorical), "discrete actions only"
        return self.dist

    def rsample(self) -> Tensor:
        if self.discrete:
            sample = self.dist.sample()
            probs = self._categorical.probs
            return sample + probs - probs.detach()
        x = self.dist.rsample()
        bound = 1.0 - TRUNC_MARGIN if self.truncated else 1.0
        return x + (x.clamp(-bound, bound) - x).detach()

    def sample(self) -> Tensor:
        with torch.no_grad():
            if self.discrete:
                # Exactly one-hot: the straight-through sum of rsample is off by float rounding, which the
                # replay would then store (and an int64 one-hot spec would truncate 0.99999994 to 0).
                return self.dist.sample()
            return self.rsample()

    def mode(self) -> Tensor:
        if self.discrete:
            probs = self._categorical.probs
            return nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float()
        # The truncated normal's mode is its location clamped to the bounds; tanh keeps it inside already.
        return self.loc

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-density of each action, summed over its dimensions ([...])."""
        logp = self.dist.log_prob(action)
        # TorchRL's TruncatedNormal is already independent over the action's dimensions.
        return logp if self.discrete or self.truncated else logp.sum(-1)

    def entropy(self) -> Tensor:
        ent = self.dist.entropy()
        return ent if self.discrete or self.truncated else ent.sum(-1)


class Imagined(NamedTuple):
    """A batch of imagined trajectories, as both bases' losses read them."""

    feats: Tensor  # [H + 1, N, F]
    entropy: Tensor  # [H, N] of each action under the policy that chose it
    log_prob: Tensor  # [H, N] (REINFORCE only; empty otherwise)
    reward: Tensor  # [H, N] predicted reward of arriving at step t + 1
    discount: Tensor  # [H, N] discount times the continue probability of step t + 1
    weight: Tensor  # [H, N] how much each step counts (0 after a terminal start or state)


class ReturnNorm(nn.Module):
    """DreamerV3's return normaliser: EMAs of the 5th and 95th percentiles of the lambda-returns.

    ``scale`` = max(limit, high - low): returns are divided by it, so large returns are brought to a unit range
    while small ones (sparse rewards) are not amplified.
    """

    low: Tensor
    high: Tensor

    def __init__(self, decay: float = 0.99, limit: float = 1.0, low: float = 5.0, high: float = 95.0) -> None:
        super().__init__()
        self.decay, self.limit, self.quantiles = decay, limit, (low / 100.0, high / 100.0)
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        q = torch.quantile(x.detach().float().flatten(), torch.tensor(self.quantiles, device=x.device))
        self.low.mul_(self.decay).add_(q[0], alpha=1 - self.decay)
        self.high.mul_(self.decay).add_(q[1], alpha=1 - self.decay)

    def scale(self) -> Tensor:
        return (self.high - self.low).clamp(min=self.limit)


class ActorCritic(L.LightningModule):
    """Actor and critic trained on imagined rollouts of a (frozen) world model.

    ``actor_grad='auto'`` backpropagates returns through the dynamics for continuous actions and uses
    REINFORCE for discrete ones, as DreamerV2 does on DMC and Atari.

    Args:
        feat_dim: size of the world model's feature (deter + stoch), filled in by the agent.
        action_dim: action size, from the env.
        discrete: one-hot actions, from the env.
        units: width of the actor and critic MLPs.
        layers: hidden layers of the actor and critic MLPs.
        horizon: imagination length.
        discount: per-step discount (times the predicted continue probability, if any).
        lambda_: lambda of the TD(lambda) targets.
        actor_entropy: entropy bonus of the actor.
        actor_grad: ``dynamics`` (backprop through the model), ``reinforce``, or ``auto`` (by action type).
        min_std: lower bound of the continuous actor's standard deviation.
        slow_critic_every: updates between refreshes of the slow (target) critic.
        slow_critic_fraction: how far each refresh moves the slow critic towards the critic (1: copy).
        return_norm: scale the actor's objective by max(1, EMA of the 5-95 percentile range of returns),
            DreamerV3's normaliser.
        imag_starts: imagine from this many random posterior states (0: all B x T of them).
    """

    # The base's structure (not configuration), overridden by ActorCriticV3.
    _norm: ClassVar[bool] = False
    _act: ClassVar[type[nn.Module]] = nn.ELU
    updates: Tensor  # a buffer: completed updates, saved with the weights
    _critic_out: ClassVar[int] = 1
    _zero_critic: ClassVar[bool] = False

    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        discrete: bool = False,
        *,
        units: int = 400,
        layers: int = 4,
        horizon: int = 15,
        discount: float = 0.99,
        lambda_: float = 0.95,
        actor_entropy: float = 1e-4,
        actor_grad: Literal["auto", "dynamics", "reinforce"] = "auto",
        min_std: float = 0.1,
        slow_critic_every: int = 100,
        slow_critic_fraction: float = 1.0,
        return_norm: bool = False,
        imag_starts: int = 0,
    ) -> None:
        super().__init__()
        if actor_grad not in ("auto", "dynamics", "reinforce"):
            raise ValueError(f"actor_grad must be auto, dynamics or reinforce; got {actor_grad!r}")
        if actor_grad == "dynamics" and discrete:
            raise ValueError("actor_grad='dynamics' needs continuous actions; use 'reinforce' for discrete")
        self.discrete = discrete
        self.actor_grad = ("reinforce" if discrete else "dynamics") if actor_grad == "auto" else actor_grad
        self.horizon, self.discount, self.lambda_ = horizon, discount, lambda_
        self.actor_entropy, self.min_std = actor_entropy, min_std
        self.slow_critic_every, self.slow_critic_fraction = slow_critic_every, slow_critic_fraction
        self.return_norm, self.imag_starts = return_norm, imag_starts
        blocks: Blocks = {"norm": self._norm, "act": self._act}
        self.actor = mlp(
            feat_dim, action_dim if discrete else 2 * action_dim, hidden=units, layers=layers, **blocks
        )
        self.critic = mlp(
            feat_dim,
            self._critic_out,
            hidden=units,
            layers=layers,
            out_scale=0.0 if self._zero_critic else 1.0,
            **blocks,
        )
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # Only used if return_norm.
        self.retnorm = ReturnNorm()
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._compiled_imagine: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]] | None = None

    def compile_imagination(self) -> None:
        """``torch.compile`` the imagination rollout (one graph per batch shape; weights are untouched, so
        checkpoints are the same as uncompiled)."""
        self._compiled_imagine = torch.compile(self.imagine, dynamic=False)

    @property
    def return_range(self) -> Tensor:
        """EMA of the 5-95 percentile range of the returns (0 until the first update)."""
        return self.retnorm.high - self.retnorm.low

    def action_dist(self, feat: Tensor) -> ActionDist:
        return ActionDist(self.actor(feat), discrete=self.discrete, min_std=self.min_std)

    def imagine(
        self, world_model: WorldModel, start: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Rolls the prior forward ``horizon`` steps from ``start`` ([N, ...]).

        Returns feats [H+1, N, F], actions [H, N, A], and the entropy and log-probability [H, N] of each
        action under the policy that chose it (kept from the rollout so the actor is not run twice).
        """
        state = start
        feats, actions, entropies, log_probs = [world_model.feat(state)], [], [], []
        for _ in range(self.horizon):
            dist = self.action_dist(feats[-1].detach())
            action = dist.rsample()
            state, _ = world_model.rssm.img_step(state, action.to(state[0].dtype))
            feats.append(world_model.feat(state))
            actions.append(action)
            entropies.append(dist.entropy())
            if self.actor_grad == "reinforce":
                log_probs.append(dist.log_prob(action.detach()))
        log_prob = torch.stack(log_probs) if log_probs else torch.zeros(0)
        return torch.stack(feats), torch.stack(actions), torch.stack(entropies), log_prob

    def _starts(self, start: Starts) -> Starts:
        """Detached, flattened posterior states, subsampled to ``imag_starts``."""
        deter, stoch = (s.detach().flatten(0, -2) for s in (start.deter, start.stoch))
        cont = start.cont.detach().flatten().to(deter.dtype)
        if self.imag_starts and deter.shape[0] > self.imag_starts:
            idx = torch.randperm(deter.shape[0], device=deter.device)[: self.imag_starts]
            deter, stoch, cont = deter[idx], stoch[idx], cont[idx]
        return Starts(deter, stoch, cont)

    @staticmethod
    def _weight(discount: Tensor, start_cont: Tensor) -> Tensor:
        """How much each imagined step counts: the product of the continue probabilities before it, times
        the start's own (0 for a terminal start: nothing imagined from it is real)."""
        with torch.no_grad():
            before = torch.cat([start_cont.float().unsqueeze(0), discount[:-1]])
            return torch.cumprod(before, 0)

    def _rollout(self, world_model: WorldModel, start: Starts) -> Imagined:
        """Imagines from (detached, subsampled) posterior states through the frozen world model."""
        deter, stoch, start_cont = self._starts(start)
        imagine = self._compiled_imagine or self.imagine
        with world_model.frozen():
            feats, _, entropy, log_prob = imagine(world_model, (deter, stoch))
            reward = world_model.reward(feats[1:])
            discount = self.discount * world_model.continue_prob(feats[1:]).squeeze(-1)
        return Imagined(feats, entropy, log_prob, reward, discount, self._weight(discount, start_cont))

    def loss(self, world_model: WorldModel, start: Starts) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Actor and critic losses from imagination starting at (detached) posterior states."""
        feats, entropy, log_prob, reward, discount, weight = self._rollout(world_model, start)
        value = self.slow_critic(feats).float().squeeze(-1)
        target = lambda_return(reward, value, discount, lambda_=self.lambda_)  # [H, N]

        if self.return_norm:
            self.retnorm.update(target)
        scale = self.retnorm.scale() if self.return_norm else torch.ones((), device=target.device)
        value_pred = self.critic(feats[:-1].detach()).float().squeeze(-1)
        if self.actor_grad == "dynamics":
            objective = target / scale
        else:
            # DreamerV2's baseline is the slow critic, like the targets it is compared with.
            advantage = ((target - value[:-1]) / scale).detach()
            objective = log_prob * advantage
        actor_loss = -(weight * (objective + self.actor_entropy * entropy)).mean()

        critic_loss = (weight * 0.5 * (value_pred - target.detach()).pow(2)).mean()
        metrics = {
            "imag_return": target[0].mean().detach(),
            "imag_reward": reward.mean().detach(),
            "actor_entropy": entropy.mean().detach(),
            "value": value_pred.mean().detach(),
            "return_scale": scale.detach().clone(),
        }
        return {"actor": actor_loss, "critic": critic_loss}, metrics

    @torch.no_grad()
    def after_update(self) -> None:
        """Counts updates and refreshes the slow critic every ``slow_critic_every`` updates."""
        if self.updates % self.slow_critic_every == 0:
            mix = self.slow_critic_fraction
            for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
                slow.mul_(1 - mix).add_(fast, alpha=mix)
        self.updates += 1
