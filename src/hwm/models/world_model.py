"""DreamerV2 world model: encoder, RSSM, decoder, reward and continue heads; loss as named terms."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

import lightning as L
import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from hwm.models.losses import balanced_kl, bernoulli_nll, unit_gaussian_nll
from hwm.models.networks import Blocks, ConvDecoder, ConvEncoder, flat_dim, frozen, mlp
from hwm.models.rssm import RSSM, State

# The replay's step layout (DreamerV2/V3's): step t holds o_t, the action a_{t-1} that led to it (zeros at an
# episode's first step), r_t, and the flags of o_t.
ACTION_KEY, REWARD_KEY = "action", "reward"
IS_FIRST, IS_LAST, IS_TERMINAL = "is_first", "is_last", "is_terminal"


class Starts(NamedTuple):
    """Posterior states to imagine from, with whether each may continue (0 at a terminal state)."""

    deter: Tensor  # [..., D]
    stoch: Tensor  # [..., S*K]
    cont: Tensor  # [...]


class WorldModel(L.LightningModule):
    """Learns p(o|z), p(r|z), p(c|z) and the latent dynamics from replayed [B, T] sequences.

    Observations of rank 3 are (C, 64, 64) uint8 images and use the CNN encoder/decoder; rank-1
    observations are state vectors and use MLPs. A batch holds replayed steps [B, T] as DreamerV2/V3 store
    them: ``obs_key`` o_t, ``action`` a_{t-1}, ``reward`` r_t, ``is_first`` and ``is_terminal``. An episode's
    first step (the reset observation, zero action and reward) is a training target like any other.

    Of the losses, ``HARMONIZED`` are weighed by the harmonizer; ``continue`` keeps a fixed weight.

    The structure of the base (block type, conv padding, reward head) is set by class attributes, which
    ``hwm.models.world_model_v3.WorldModelV3`` overrides; the constructor arguments are the configuration.

    Args:
        obs_shape: observation shape, from the env (not configured).
        action_dim: action size, from the env (not configured).
        deter: GRU (deterministic state) size.
        hidden: width of the RSSM's input/output layers.
        stoch: number of categorical latents.
        classes: classes per categorical latent.
        cnn_depth: channels of the first conv layer (pixels only); later layers use 2x, 4x, 8x.
        mlp_units: width of the MLP encoder (states), decoder (states) and heads.
        mlp_layers: hidden layers of those MLPs.
        kl_balance: weight of the prior's side of the KL (DreamerV2: 0.8).
        free_nats: the KL is not pushed below this many nats (0 disables).
        continue_head: predict episode continuation (off for tasks that never terminate, like DMC).
    """

    base: ClassVar[str] = "dreamerv2"
    _norm: ClassVar[bool] = False  # LayerNorm in every block (DreamerV3)
    _act: ClassVar[type[nn.Module]] = nn.ELU
    _v3_cnn: ClassVar[bool] = False  # 'same'-padded convs down to 4x4 and back
    _reward_out: ClassVar[int] = 1  # DreamerV3: two-hot bins
    _zero_heads: ClassVar[bool] = False  # zero-initialised reward output (DreamerV3)
    _learned_initial: ClassVar[bool] = False  # the RSSM's start state is learned (DreamerV3)
    HARMONIZED: ClassVar[tuple[str, ...]] = ("obs", "reward", "dynamics")

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        *,
        deter: int = 200,
        hidden: int = 200,
        stoch: int = 32,
        classes: int = 32,
        cnn_depth: int = 32,
        mlp_units: int = 400,
        mlp_layers: int = 4,
        kl_balance: float = 0.8,
        free_nats: float = 0.0,
        continue_head: bool = True,
    ) -> None:
        super().__init__()
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.pixels = len(self.obs_shape) == 3
        self.obs_key = "pixels" if self.pixels else "observation"
        self.action_dim = action_dim
        self.kl_balance, self.free_nats = kl_balance, free_nats
        blocks: Blocks = {"norm": self._norm, "act": self._act}
        if self.pixels:
            self.encoder: nn.Module = ConvEncoder(
                depth=cnn_depth, in_channels=self.obs_shape[0], same_padding=self._v3_cnn, **blocks
            )
            embed_dim = self.encoder.out_dim
        else:
            obs_dim = flat_dim(self.obs_shape)
            tail = [nn.LayerNorm(mlp_units, eps=1e-3), self._act()] if self._norm else [self._act()]
            self.encoder = nn.Sequential(
                mlp(obs_dim, mlp_units, hidden=mlp_units, layers=mlp_layers - 1, **blocks), *tail
            )
            embed_dim = mlp_units
        self.rssm = RSSM(
            action_dim=action_dim,
            embed_dim=embed_dim,
            deter=deter,
            hidden=hidden,
            stoch=stoch,
            classes=classes,
            learned_initial=self._learned_initial,
            **self._rssm_options(),
            **blocks,
        )
        feat = self.rssm.feat_dim
        if self.pixels:
            self.decoder: nn.Module = ConvDecoder(
                feat,
                depth=cnn_depth,
                out_channels=self.obs_shape[0],
                minres=4 if self._v3_cnn else 1,
                **blocks,
            )
        else:
            self.decoder = mlp(feat, flat_dim(self.obs_shape), hidden=mlp_units, layers=mlp_layers, **blocks)
        self.reward_head = mlp(
            feat,
            self._reward_out,
            hidden=mlp_units,
            layers=mlp_layers,
            out_scale=0.0 if self._zero_heads else 1.0,
            **blocks,
        )
        self.continue_head = (
            mlp(feat, 1, hidden=mlp_units, layers=mlp_layers, **blocks) if continue_head else None
        )

    def _rssm_options(self) -> dict[str, Any]:
        """Extra RSSM arguments of a base (DreamerV3: unimix)."""
        return {}

    @property
    def task_scales(self) -> dict[str, float]:
        """The base's own fixed weights of the harmonized tasks (1 where absent); see the agent."""
        return {}

    @property
    def regularizer_scales(self) -> dict[str, float]:
        """Weights of the harmonizers' regularisers log(1 + sigma) per task (1 where absent)."""
        return {}

    def shared_parameters(self) -> list[nn.Parameter]:
        """What GradNorm measures each task's gradient on: the RSSM's recurrent cell, which every harmonized
        task's gradient passes through (the decoder and reward head read its state, the KL its prior and
        posterior), and the last layer all of them share."""
        return list(self.rssm.cell.parameters())

    @staticmethod
    def feat(state: State) -> Tensor:
        return torch.cat(state, -1)

    def encode(self, obs: Tensor) -> Tensor:
        return self.encoder(obs if self.pixels else obs.to(torch.get_default_dtype()))

    def decoder_target(self, obs: Tensor) -> Tensor:
        """What the decoder's mean predicts for an observation: pixels scaled to [-0.5, 0.5], vectors as
        they are."""
        return obs.float() / 255.0 - 0.5 if self.pixels else obs.float()

    def reward(self, feat: Tensor) -> Tensor:
        """Predicted reward [...] (no trailing dim) of features [..., F]."""
        return self.reward_head(feat).float().squeeze(-1)

    def continue_prob(self, feat: Tensor) -> Tensor:
        if self.continue_head is None:
            return torch.ones(*feat.shape[:-1], 1, device=feat.device, dtype=torch.float32)
        return torch.sigmoid(self.continue_head(feat).float())

    def _unpack(self, batch: TensorDictBase) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(obs, action, reward, is_first, is_terminal) of a [B, T] batch, shape-checked."""
        obs = batch.get(self.obs_key)
        action = batch.get(ACTION_KEY).to(torch.get_default_dtype())
        reward = batch.get(REWARD_KEY).float()
        is_first = batch.get(IS_FIRST)
        terminal = batch.get(IS_TERMINAL).float()
        B, T = action.shape[:2]
        assert obs.shape == (B, T, *self.obs_shape), f"obs {tuple(obs.shape)} != {(B, T, *self.obs_shape)}"
        assert action.shape == (B, T, self.action_dim), f"action {tuple(action.shape)}"
        for name, value in (("reward", reward), ("is_first", is_first), ("is_terminal", terminal)):
            assert value.shape == (B, T, 1), f"{name} {tuple(value.shape)} != {(B, T, 1)}"
        # The state before a replayed sequence is unknown: its first step starts from the initial state.
        assert is_first[:, 0].all(), "a replayed sequence must start with is_first set"
        return obs, action, reward, is_first, terminal

    def starts(self, post: dict[str, Tensor], terminal: Tensor) -> Starts:
        """Every posterior state as an imagination start; a terminal one has nothing to continue to."""
        return Starts(post["deter"], post["stoch"], 1.0 - terminal.squeeze(-1))

    def loss(self, batch: TensorDictBase) -> tuple[dict[str, Tensor], Starts, dict[str, Tensor]]:
        """Returns (named per-task losses, posterior states [B, T] to imagine from, detached diagnostics)."""
        obs, action, reward, is_first, terminal = self._unpack(batch)
        embed = self.encode(obs)
        post = self.rssm.observe(embed, action, is_first)
        feat = self.feat((post["deter"], post["stoch"]))

        if self.pixels:
            target = obs.float() / 255.0 - 0.5
            obs_loss = unit_gaussian_nll(self.decoder(feat), target, event_dims=3)
        else:
            obs_loss = unit_gaussian_nll(self.decoder(feat), obs, event_dims=1)
        reward_pred = self.reward_head(feat)
        reward_loss = unit_gaussian_nll(reward_pred, reward, event_dims=1)
        dyn_loss, kl = balanced_kl(
            post["post_logits"], post["prior_logits"], balance=self.kl_balance, free_nats=self.free_nats
        )
        losses = {
            "obs": obs_loss.mean(),
            "reward": reward_loss.mean(),
            "dynamics": dyn_loss,
            "continue": self._continue_loss(feat, terminal),
        }
        metrics = latent_metrics(post, kl)
        metrics.update(reward_error_metrics(reward_pred.squeeze(-1), reward.squeeze(-1), action))
        return losses, self.starts(post, terminal), metrics

    def _continue_loss(self, feat: Tensor, terminal: Tensor) -> Tensor:
        if self.continue_head is None:
            return torch.zeros((), device=feat.device)
        return bernoulli_nll(self.continue_head(feat), 1.0 - terminal).mean()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Stops parameter gradients (not input gradients) while the actor backpropagates through us."""
        with frozen(self):
            yield


def latent_metrics(post: dict[str, Tensor], kl: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return {
            "kl": kl.detach(),
            "post_entropy": _entropy(post["post_logits"]),
            "prior_entropy": _entropy(post["prior_logits"]),
        }


# Replayed actions at or above this mean |a| count as large in the reward error's split.
LARGE_ACTION = 0.5


def reward_error_metrics(pred: Tensor, reward: Tensor, action: Tensor) -> dict[str, Tensor]:
    """Squared error of the predicted reward [B, T], overall and split by the size of the action that
    earned it (step t holds a_{t-1} and r_t): a model that misses a control cost (cartpole's small_control)
    is off mostly where actions are large. ``large_action_share`` is the share of large actions; a split's
    error is 0 when it holds no step."""
    with torch.no_grad():
        error = (pred.float() - reward.float()).square()
        large = (action.float().abs().mean(-1) >= LARGE_ACTION).float()
        small = 1.0 - large
        return {
            "reward_mse": error.mean(),
            "reward_mse_large_action": (error * large).sum() / large.sum().clamp(min=1.0),
            "reward_mse_small_action": (error * small).sum() / small.sum().clamp(min=1.0),
            "large_action_share": large.mean(),
        }


def _entropy(logits: Tensor) -> Tensor:
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum((-2, -1)).mean()
