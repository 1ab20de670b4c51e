"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018): task weights that balance gradient norms.

The gradient-based balancing HarmonyDream sets its harmonizers against. Each task i has a weight w_i
(1 at the start); G_i = w_i ||grad_W L_i|| is its weighted gradient norm on the shared parameters W.
The weights minimise

    L_grad = sum_i | G_i - mean_j(G_j) * r_i^alpha |,    r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0)),

with the target mean_j(G_j) r_i^alpha held constant, and are renormalised to sum to the number of tasks after
every step. With alpha = 0 the fixed point is equal weighted norms, w_i proportional to 1 / ||grad_W L_i||;
alpha > 0 gives tasks that train slower (a larger loss ratio r_i) a larger share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def task_gradient_norms(losses: Mapping[str, Tensor], params: Sequence[Tensor]) -> dict[str, Tensor]:
    """||grad_params L_i||_2 of each (unweighted) task loss, detached; the graph is kept for the update.

    One partial backward pass per task: it reaches ``params`` only (autograd computes nothing beyond them).
    A task whose loss does not depend on ``params`` has norm 0.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("GradNorm needs shared parameters that require gradients")
    norms = {}
    for task, loss in losses.items():
        if not loss.requires_grad:  # a constant (e.g. a loss of a head the model does not have)
            norms[task] = loss.new_zeros(()).float()
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().square().sum() for g in grads if g is not None]
        norms[task] = torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(()).float()
    return norms


def gradnorm_loss(
    weights: Tensor, losses: Tensor, grad_norms: Tensor, initial_losses: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """(L_grad, target norms): L_grad's gradient reaches ``weights`` only; everything else is a constant.

    ``losses``, ``grad_norms`` (unweighted ||grad_W L_i||) and ``initial_losses`` are [tasks] tensors.
    """
    weighted = weights * grad_norms.detach()
    ratios = losses.detach() / initial_losses.clamp(min=1e-12)
    relative = ratios / ratios.mean().clamp(min=1e-12)
    target = (weighted.mean() * relative.pow(alpha)).detach()
    return (weighted - target).abs().sum(), target


@torch.no_grad()
def renormalize_(weights: Tensor, floor: float = 1e-4) -> None:
    """Puts the weights back on sum = number of tasks (GradNorm's renormalisation), each at least ``floor``
    of that sum's share, so that a large step can never make a weight zero or negative."""
    count = weights.numel()
    weights.clamp_(min=floor)
    weights.mul_(count / weights.sum())
