"""Pure loss functions shared by the world model and the actor-critic."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from hwm.models.distributions import symlog


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


def sum_squared_error(pred: Tensor, target: Tensor, event_dims: int) -> Tensor:
    """DreamerV3's image loss ('mse' with 'sum'): no 1/2 factor, unlike the V2 unit-Gaussian NLL."""
    return (pred.float() - target.float()).square().flatten(-event_dims).sum(-1)


def symlog_mse(pred: Tensor, target: Tensor, event_dims: int) -> Tensor:
    """DreamerV3's vector decoder loss: squared error against symlog(target), summed over the event."""
    return sum_squared_error(pred, symlog(target.float()), event_dims)
