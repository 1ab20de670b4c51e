"""Recurrent state-space model (DreamerV2/V3): GRU deterministic state + categorical stochastic state."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hwm.models.distributions import unimix_logits
from hwm.models.networks import NormGRUCell

State = tuple[Tensor, Tensor]  # (deter [..., D], stoch [..., S*K] one-hot samples, flattened)


def sample_straight_through(logits: Tensor) -> Tensor:
    """One-hot sample per categorical (last dim) with straight-through gradients to the probabilities.

    Sampled in float32 under mixed precision: bf16 logits plus Gumbel noise (3 significant digits) would
    skew which class wins.
    """
    logits = logits.float()
    probs = logits.softmax(-1)
    # Gumbel-max draws the same distribution as multinomial but stays one batched op.
    gumbel = -torch.log(-torch.log(torch.rand_like(probs).clamp_(1e-20, 1.0)))
    index = (logits.detach() + gumbel).argmax(-1)
    one_hot = F.one_hot(index, logits.shape[-1]).to(probs.dtype)
    return one_hot + probs - probs.detach()


class RSSM(nn.Module):
    """Prior p(z_t | h_t), posterior q(z_t | h_t, e_t), h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1}).

    The input layers are split by source (stoch/action, deter/embed) so that the action and embedding
    parts are computed for the whole sequence at once, outside the per-step Python loop; the prior of a
    whole observed sequence is likewise computed in one call after the loop.

    DreamerV3 differs in its blocks (``norm``: LayerNorm before ``act``, SiLU), in mixing 1% of a uniform
    distribution into every categorical (``unimix``), which keeps the KL and log-probs bounded, and in a
    learned initial state (``learned_initial``: deter = tanh(w), stoch = the prior's mode there) instead of
    zeros.

    Episode starts are marked per step (``is_first``): there the previous state is replaced by the initial
    state and the previous action by zeros, as DreamerV2/V3 do, so one sequence may hold several episodes.
    """

    def __init__(
        self,
        *,
        action_dim: int,
        embed_dim: int,
        deter: int = 200,
        hidden: int = 200,
        stoch: int = 32,
        classes: int = 32,
        norm: bool = False,
        act: type[nn.Module] = nn.ELU,
        unimix: float = 0.0,
        learned_initial: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1); got {unimix}")
        self.deter_dim, self.stoch, self.classes = deter, stoch, classes
        self.stoch_dim = stoch * classes
        self.unimix = unimix
        self.img_in_stoch = nn.Linear(self.stoch_dim, hidden)
        self.img_in_action = nn.Linear(action_dim, hidden, bias=False)
        # Applied to the sum of the stoch and action projections (one linear over their concatenation).
        self.img_in_act = nn.Sequential(nn.LayerNorm(hidden, eps=1e-3), act()) if norm else act()
        self.cell = NormGRUCell(hidden, deter)
        prior_hidden = (
            [nn.Linear(deter, hidden), nn.LayerNorm(hidden, eps=1e-3)] if norm else [nn.Linear(deter, hidden)]
        )
        self.prior_net = nn.Sequential(*prior_hidden, act(), nn.Linear(hidden, self.stoch_dim))
        self.post_in_deter = nn.Linear(deter, hidden)
        self.post_in_embed = nn.Linear(embed_dim, hidden, bias=False)
        post_norm = [nn.LayerNorm(hidden, eps=1e-3)] if norm else []
        self.post_out = nn.Sequential(*post_norm, act(), nn.Linear(hidden, self.stoch_dim))
        # tanh(0) = 0: a learned initial state starts where the zero state is.
        self.initial_deter = nn.Parameter(torch.zeros(deter)) if learned_initial else None

    @property
    def feat_dim(self) -> int:
        return self.deter_dim + self.stoch_dim

    def initial(self, batch_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> State:
        """The state before an episode's first step: zeros, or DreamerV3's learned one."""
        if self.initial_deter is None:
            return (
                torch.zeros(*batch_shape, self.deter_dim, device=device, dtype=dtype),
                torch.zeros(*batch_shape, self.stoch_dim, device=device, dtype=dtype),
            )
        deter = torch.tanh(self.initial_deter).to(device, dtype)
        # The prior's mode (no sample, no straight-through): the start state is a deterministic function of w.
        logits = self.prior_logits(deter).detach()
        stoch = F.one_hot(logits.argmax(-1), self.classes).flatten(-2).to(dtype)
        return deter.expand(*batch_shape, -1), stoch.expand(*batch_shape, -1)

    def reset_where(self, state: State, is_first: Tensor, initial: State | None = None) -> State:
        """``state`` with ``initial`` (default: the initial state) put in where ``is_first`` [..., 1] is set.

        A blend rather than a select, as the authors' code: the kept state's gradient is scaled by 1 - is_first.
        """
        first = is_first.to(state[0].dtype)
        if initial is None:
            initial = self.initial(tuple(state[0].shape[:-1]), state[0].device, state[0].dtype)
        deter = state[0] * (1.0 - first) + initial[0] * first
        stoch = state[1] * (1.0 - first) + initial[1] * first
        return deter, stoch

    def _logits(self, flat: Tensor) -> Tensor:
        return unimix_logits(flat.unflatten(-1, (self.stoch, self.classes)), self.unimix)

    def _sample(self, logits: Tensor) -> Tensor:
        return sample_straight_through(logits).flatten(-2)

    def prior_logits(self, deter: Tensor) -> Tensor:
        return self._logits(self.prior_net(deter))

    def deter_step(self, state: State, action_proj: Tensor) -> Tensor:
        deter, stoch = state
        x = self.img_in_act(self.img_in_stoch(stoch) + action_proj)
        return self.cell(x, deter)

    def img_step(self, state: State, action: Tensor) -> tuple[State, Tensor]:
        """One prior step; returns the new state and its prior logits [..., S, K]."""
        deter = self.deter_step(state, self.img_in_action(action))
        logits = self.prior_logits(deter)
        return (deter, self._sample(logits)), logits

    def obs_step(
        self, state: State, action: Tensor, embed: Tensor, is_first: Tensor | None = None
    ) -> tuple[State, Tensor]:
        """One posterior step (used when acting); returns the new state and its posterior logits.

        ``is_first`` [..., 1]: where set, ``state`` and ``action`` are replaced by the initial state and zeros.
        """
        if is_first is not None:
            state = self.reset_where(state, is_first)
            action = action * (1.0 - is_first.to(action.dtype))
        deter = self.deter_step(state, self.img_in_action(action))
        logits = self._logits(self.post_out(self.post_in_deter(deter) + self.post_in_embed(embed)))
        return (deter, self._sample(logits)), logits

    def observe(
        self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None
    ) -> dict[str, Tensor]:
        """Posterior rollout over a [B, T] sequence: input t is (a_{t-1}, e_t, is_first_t).

        Where ``is_first`` [B, T, 1] is set, the step starts from the initial state with a zero action (an
        episode start); ``state`` (default: the initial state) is the state before step 0.
        Returns deter [B,T,D], stoch [B,T,S*K], post_logits and prior_logits [B,T,S,K].
        """
        B, T = embed.shape[:2]
        assert action.shape[:2] == (B, T), f"action {tuple(action.shape)} vs embed {tuple(embed.shape)}"
        assert is_first.shape == (B, T, 1), f"is_first {tuple(is_first.shape)}, expected {(B, T, 1)}"
        initial = self.initial((B,), embed.device, embed.dtype)
        state = initial if state is None else state
        first = is_first.to(embed.dtype)
        # A zero action projects to zero (no bias), so masking the projection masks the action.
        action_proj = self.img_in_action(action) * (1.0 - first)
        embed_proj = self.post_in_embed(embed)
        deters, stochs, post = [], [], []
        for t in range(T):
            state = self.reset_where(state, first[:, t], initial)
            deter = self.deter_step(state, action_proj[:, t])
            logits = self._logits(self.post_out(self.post_in_deter(deter) + embed_proj[:, t]))
            state = (deter, self._sample(logits))
            deters.append(deter)
            stochs.append(state[1])
            post.append(logits)
        deter = torch.stack(deters, 1)
        return {
            "deter": deter,
            "stoch": torch.stack(stochs, 1),
            "post_logits": torch.stack(post, 1),
            "prior_logits": self.prior_logits(deter),
        }
