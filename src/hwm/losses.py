"""Pure loss functions shared by the world model and the actor-critic."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def unit_gaussian_nll(mean: Tensor, target: Tensor, event_dims: int) -> Tensor:
    """-log N(target; mean, 1) summed over the last ``event_dims`` dims, without its constant.

    The constant 0.5 log(2 pi) per element is dropped, as in the authors' code: the harmonizer sees the
    loss's value, and a floor of 0.92 nats would cap the reward weight at 1/sigma*(0.92) = 0.66 and pin the
    image weight near 1/11,300 however good the reconstruction. Summed over 64x64x3, L_obs still dwarfs L_r.
    """
    return (0.5 * (mean.float() - target.float()).square()).flatten(-event_dims).sum(-1)


def categorical_kl(lhs_logits: Tensor, rhs_logits: Tensor) -> Tensor:
    """KL[lhs || rhs] for independent categoricals [..., S, K], summed over S."""
    lhs_logp = lhs_logits.float().log_softmax(-1)
    rhs_logp = rhs_logits.float().log_softmax(-1)
    return (lhs_logp.exp() * (lhs_logp - rhs_logp)).sum((-2, -1))


def balanced_kl(
    post_logits: Tensor, prior_logits: Tensor, *, balance: float = 0.8, free_nats: float = 0.0
) -> tuple[Tensor, Tensor]:
    """DreamerV2 KL balancing: balance * KL[sg(q)||p] + (1 - balance) * KL[q||sg(p)].

    Free nats clip each side's batch mean from below (DreamerV2's ``free_avg``). Returns (loss, raw KL mean).
    """
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"KL balance must be in [0, 1]; got {balance}")
    kl_prior = categorical_kl(post_logits.detach(), prior_logits).mean()  # trains the prior
    kl_post = categorical_kl(post_logits, prior_logits.detach()).mean()  # regularises the posterior
    raw = kl_post.detach()  # both sides have the same value; only their gradients differ
    if free_nats > 0:
        kl_prior = kl_prior.clamp(min=free_nats)
        kl_post = kl_post.clamp(min=free_nats)
    loss = balance * kl_prior + (1.0 - balance) * kl_post
    return loss, raw


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")


def lambda_return(reward: Tensor, value: Tensor, discount: Tensor, *, lambda_: float = 0.95) -> Tensor:
    """TD(lambda) targets along dim 0.

    reward, discount: [H, N] for transitions t -> t+1 (reward and discount of arriving at t+1);
    value: [H + 1, N]. Returns [H, N] with R_t = r_t + d_t ((1 - lambda) v_{t+1} + lambda R_{t+1}),
    bootstrapped with R_H = v_H.
    """
    H = reward.shape[0]
    assert value.shape[0] == H + 1, f"value needs H+1={H + 1} steps, got {value.shape[0]}"
    assert discount.shape == reward.shape, f"discount {tuple(discount.shape)} vs reward {tuple(reward.shape)}"
    inputs = reward + discount * value[1:] * (1.0 - lambda_)
    out = []
    last = value[-1]
    for t in reversed(range(H)):
        last = inputs[t] + discount[t] * lambda_ * last
        out.append(last)
    return torch.stack(out[::-1], 0)


# -- DreamerV3 -----------------------------------------------------------------------------------------------


def symlog(x: Tensor) -> Tensor:
    """sign(x) log(1 + |x|): compresses large magnitudes so one network fits rewards/inputs of any scale."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """The inverse of ``symlog``."""
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot:
    """DreamerV3's discrete regression: ``bins`` evenly spaced in symlog space, from ``low`` to ``high``.

    A scalar y is encoded as the two-hot vector over the two bins around symlog(y), weighted by closeness, so
    the expected bin equals symlog(y) exactly inside the range; decoding is symexp(sum_i p_i b_i). The loss is
    the cross-entropy against that target, which does not scale with the magnitude of y.
    """

    def __init__(
        self, bins: int = 255, low: float = -20.0, high: float = 20.0, transform: bool = True
    ) -> None:
        if bins < 2:
            raise ValueError(f"two-hot needs at least 2 bins; got {bins}")
        self.bins, self.transform = bins, transform
        points = torch.linspace(low, high, bins, dtype=torch.float64)
        if low == -high:  # exactly antisymmetric, so that 0 sits exactly on the middle bin
            points = (points - points.flip(0)) / 2
        self._points = points.float()

    def points(self, like: Tensor) -> Tensor:
        # Kept on the device last asked for: a host-to-GPU copy on every call would stall the stream.
        if self._points.device != like.device:
            self._points = self._points.to(like.device)
        return self._points

    def encode(self, y: Tensor) -> Tensor:
        """[...] values -> [..., bins] two-hot targets (clipped to the outer bins)."""
        points = self.points(y)
        x = symlog(y.float()) if self.transform else y.float()
        x = x.clamp(points[0], points[-1])
        above = torch.searchsorted(points, x.contiguous(), right=True).clamp(1, self.bins - 1)
        below = above - 1
        lo, hi = points[below], points[above]
        w_hi = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        target = F.one_hot(below, self.bins) * (1 - w_hi).unsqueeze(-1)
        return target + F.one_hot(above, self.bins) * w_hi.unsqueeze(-1)

    def mean(self, logits: Tensor) -> Tensor:
        """[..., bins] logits -> [...] expected value, mapped back with symexp."""
        x = (logits.float().softmax(-1) * self.points(logits)).sum(-1)
        return symexp(x) if self.transform else x

    def nll(self, logits: Tensor, y: Tensor) -> Tensor:
        """[..., bins] logits, [...] targets -> [...] cross-entropy against the two-hot encoding of y."""
        assert logits.shape[:-1] == y.shape and logits.shape[-1] == self.bins, (logits.shape, y.shape)
        return -(self.encode(y) * logits.float().log_softmax(-1)).sum(-1)


def unimix_logits(logits: Tensor, unimix: float) -> Tensor:
    """Logits of (1 - unimix) softmax(logits) + unimix / K: every class keeps a floor of probability, which
    bounds the KL and log-probabilities (DreamerV3 uses 1%)."""
    if unimix <= 0.0:
        return logits
    probs = logits.float().softmax(-1)
    return torch.log((1.0 - unimix) * probs + unimix / logits.shape[-1])


def free_bits(loss: Tensor, free: float) -> Tensor:
    """max(loss, free) elementwise: below ``free`` nats the term has no gradient (DreamerV3 clips per step)."""
    return loss.clamp(min=free) if free > 0 else loss


def dyn_rep_kl(post_logits: Tensor, prior_logits: Tensor, *, free: float = 1.0) -> tuple[Tensor, Tensor]:
    """DreamerV3's KL pair, each clipped by free bits per step before the mean.

    dynamics = KL[sg(q) || p] trains the prior; representation = KL[q || sg(p)] regularises the posterior.
    Returns their [B, T] values.
    """
    dyn = categorical_kl(post_logits.detach(), prior_logits)
    rep = categorical_kl(post_logits, prior_logits.detach())
    return free_bits(dyn, free), free_bits(rep, free)


def symlog_mse(pred: Tensor, target: Tensor, event_dims: int) -> Tensor:
    """DreamerV3's vector decoder loss: squared error against symlog(target), summed over the event."""
    return (pred.float() - symlog(target.float())).square().flatten(-event_dims).sum(-1)


def sum_squared_error(pred: Tensor, target: Tensor, event_dims: int) -> Tensor:
    """DreamerV3's image loss ('mse' with 'sum'): no 1/2 factor, unlike the V2 unit-Gaussian NLL."""
    return (pred.float() - target.float()).square().flatten(-event_dims).sum(-1)
