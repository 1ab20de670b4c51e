"""DreamerV3 world model (Hafner et al. 2023, the version HarmonyDream(V3) builds on).

What differs from the DreamerV2 model it extends: LayerNorm + SiLU blocks, 'same'-padded convs, 1% unimix
categoricals, symlog vector inputs and a symlog squared-error vector decoder, a squared-error image decoder,
a two-hot symlog reward head (255 bins, zero-initialised), and the KL split into a dynamics term (x0.5) and a
representation term (x0.1), each clipped by free bits per step.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from hwm.models.distributions import TwoHot, symlog
from hwm.models.losses import categorical_kl, dyn_rep_kl, sum_squared_error, symlog_mse
from hwm.models.world_model import Starts, WorldModel, latent_metrics, reward_error_metrics

REWARD_BINS = 255


class WorldModelV3(WorldModel):
    """DreamerV3's world model; the defaults are DreamerV3's S size (``model.size`` picks another).

    The loss's ``dynamics`` task is the KL pair normalised to unit total weight,
    (dyn_scale * dyn + rep_scale * rep) / (dyn_scale + rep_scale), as the paper's code feeds one harmonizer;
    ``task_scales`` gives back the plain DreamerV3 factor (dyn_scale + rep_scale) for unharmonized modes.

    Args:
        obs_shape: observation shape, from the env (not configured).
        action_dim: action size, from the env (not configured).
        deter: GRU (deterministic state) size.
        hidden: width of the RSSM's input/output layers (DreamerV3 ties it to the MLP width).
        stoch: number of categorical latents.
        classes: classes per categorical latent.
        cnn_depth: channels of the first conv layer (pixels only); later layers use 2x, 4x, 8x.
        mlp_units: width of the MLP encoder (states), decoder (states) and heads.
        mlp_layers: hidden layers of those MLPs.
        unimix: share of the uniform distribution mixed into every latent categorical.
        dyn_scale: weight of KL[sg(q) || p] (trains the prior).
        rep_scale: weight of KL[q || sg(p)] (regularises the posterior).
        free_nats: free bits: each KL term is clipped below at this many nats per step.
        continue_head: predict episode continuation (off for tasks that never terminate, like DMC).
    """

    base = "dreamerv3"
    _norm = True
    _act = nn.SiLU
    _v3_cnn = True
    _reward_out = REWARD_BINS
    _zero_heads = True
    _learned_initial = True

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        *,
        deter: int = 512,
        hidden: int = 512,
        stoch: int = 32,
        classes: int = 32,
        cnn_depth: int = 32,
        mlp_units: int = 512,
        mlp_layers: int = 2,
        unimix: float = 0.01,
        dyn_scale: float = 0.5,
        rep_scale: float = 0.1,
        free_nats: float = 1.0,
        continue_head: bool = True,
    ) -> None:
        if dyn_scale <= 0 or rep_scale < 0:
            raise ValueError(f"dyn_scale must be > 0 and rep_scale >= 0; got {dyn_scale}, {rep_scale}")
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1); got {unimix}")
        self.unimix = unimix  # read by _rssm_options() while the parent builds the RSSM
        super().__init__(
            obs_shape,
            action_dim,
            deter=deter,
            hidden=hidden,
            stoch=stoch,
            classes=classes,
            cnn_depth=cnn_depth,
            mlp_units=mlp_units,
            mlp_layers=mlp_layers,
            kl_balance=dyn_scale / (dyn_scale + rep_scale),
            free_nats=free_nats,
            continue_head=continue_head,
        )
        self.dyn_scale, self.rep_scale = dyn_scale, rep_scale
        self.twohot = TwoHot(REWARD_BINS)

    def _rssm_options(self) -> dict[str, float]:
        return {"unimix": self.unimix}

    @property
    def task_scales(self) -> dict[str, float]:
        return {"dynamics": self.dyn_scale + self.rep_scale}

    @property
    def regularizer_scales(self) -> dict[str, float]:
        # The authors' Atari code scales the whole harmonized dynamics term, regulariser included, by
        # dyn/(dyn+rep) and adds the representation term without a second regulariser: (5/6) log(1+sigma).
        return {"dynamics": self.dyn_scale / (self.dyn_scale + self.rep_scale)}

    def encode(self, obs: Tensor) -> Tensor:
        if self.pixels:
            return self.encoder(obs)
        return self.encoder(symlog(obs.to(torch.get_default_dtype())))

    def decoder_target(self, obs: Tensor) -> Tensor:
        return obs.float() / 255.0 - 0.5 if self.pixels else symlog(obs.float())

    def reward(self, feat: Tensor) -> Tensor:
        return self.twohot.mean(self.reward_head(feat))

    def loss(self, batch: TensorDictBase) -> tuple[dict[str, Tensor], Starts, dict[str, Tensor]]:
        """Returns (named per-task losses, posterior states [B, T] to imagine from, detached diagnostics)."""
        obs, action, reward, is_first, terminal = self._unpack(batch)
        post = self.rssm.observe(self.encode(obs), action, is_first)
        feat = self.feat((post["deter"], post["stoch"]))

        if self.pixels:
            obs_loss = sum_squared_error(self.decoder(feat), obs.float() / 255.0 - 0.5, event_dims=3)
        else:
            obs_loss = symlog_mse(self.decoder(feat), obs, event_dims=1)
        reward_logits = self.reward_head(feat)
        reward_loss = self.twohot.nll(reward_logits, reward.squeeze(-1))
        dyn, rep = dyn_rep_kl(post["post_logits"], post["prior_logits"], free=self.free_nats)
        total = self.dyn_scale + self.rep_scale
        kl_task = (self.dyn_scale * dyn.mean() + self.rep_scale * rep.mean()) / total
        losses = {
            "obs": obs_loss.mean(),
            "reward": reward_loss.mean(),
            "dynamics": kl_task,
            "continue": self._continue_loss(feat, terminal),
        }
        with torch.no_grad():
            kl = categorical_kl(post["post_logits"], post["prior_logits"]).mean()
        metrics = latent_metrics(post, kl)
        metrics.update({"kl_dyn": dyn.mean().detach(), "kl_rep": rep.mean().detach()})
        with torch.no_grad():
            reward_pred = self.twohot.mean(reward_logits)
        metrics.update(reward_error_metrics(reward_pred, reward.squeeze(-1), action))
        return losses, self.starts(post, terminal), metrics
