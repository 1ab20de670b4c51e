"""Task harmonizers (HarmonyDream, Ma, Wu et al. 2024).

Each harmonized task i has a learnable s_i with sigma_i = exp(s_i), s_i = 0 at start. The world model
minimises sum_i L_i / sigma_i + c_i R(sigma_i), where R is log(1 + sigma) in the paper's rectified form. For a
fixed L the rectified optimum is sigma* = (L + sqrt(L^2 + 4L)) / 2, so the weight 1/sigma* grows only like
1/sqrt(L) for a small loss; the unrectified R = log(sigma) has sigma* = L and its weight 1/L explodes as L -> 0.
c_i is 1 except for HarmonyDream(V3)'s KL task (5/6, as the authors' Atari code weighs it).

``gradnorm`` is the gradient-based balancing the paper sets its harmonizers against (GradNorm, Chen et al.
2018, :mod:`hwm.models.gradnorm`): it reads each task's gradient norm on the world model's shared parameters,
so its caller passes those norms in (:meth:`Harmonizer.forward`, ``needs_grad_norms``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hwm.models.gradnorm import gradnorm_loss, renormalize_

HarmonizerMode = Literal["rectified", "unrectified", "gradnorm", "fixed", "off"]
MODES: tuple[str, ...] = get_args(HarmonizerMode)
# How the harmonizers' own parameters are stepped: Adam (the paper's: inside the world model's optimizer) or
# plain SGD (an optimizer of their own).
HarmonizerOptimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = get_args(HarmonizerOptimizer)


class Harmonizer(L.LightningModule):
    """Weights a mapping of per-task losses into one scalar.

    A LightningModule like the world model and the actor-critic, so each part is built, moved and tested
    alone; its parameters are stepped by the world-model optimizer (as in the paper's code), and only the
    agent trains and logs.

    Args:
        tasks: names of the harmonized tasks, in the order their parameters are stored.
        mode: ``rectified`` (L/sigma + log(1+sigma), the paper's), ``unrectified`` (L/sigma + log sigma),
            ``gradnorm`` (weights that balance the tasks' gradient norms), ``fixed`` (constant user weights:
            the DreamerV2 baseline; a weight of 0 drops a task, e.g. ``{obs: 0}`` for a reward-only model) or
            ``off`` (every weight 1).
        weights: constant weights for ``fixed`` mode; tasks left out get 1.0.
        regularizer_scales: a factor on a task's regulariser (tasks left out get 1.0). HarmonyDream(V3)
            weighs its shared KL harmonizer, regulariser included, by dyn/(dyn+rep) = 5/6.
        gradnorm_alpha: GradNorm's asymmetry alpha (0: equal weighted gradient norms; the GradNorm paper
            uses 0.12 to 3, 1.5 on NYUv2).
    """

    log_sigma: nn.Parameter | None  # the learnable modes only
    gradnorm_weights: nn.Parameter | None  # gradnorm only
    initial_losses: Tensor  # gradnorm only
    fixed_weights: Tensor
    regularizer_scales: Tensor

    def __init__(
        self,
        tasks: Sequence[str] = ("obs", "reward", "dynamics"),
        mode: HarmonizerMode = "rectified",
        weights: Mapping[str, float] | None = None,
        regularizer_scales: Mapping[str, float] | None = None,
        gradnorm_alpha: float = 1.5,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"harmonizer mode must be one of {', '.join(MODES)}; got {mode!r}")
        tasks = tuple(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"harmonizer tasks must be distinct and non-empty; got {tasks}")
        weights = dict(weights or {})
        unknown = set(weights) - set(tasks)
        if unknown:
            raise ValueError(
                f"harmonizer weights name unknown tasks {sorted(unknown)}; tasks are {list(tasks)}"
            )
        if weights and mode != "fixed":
            raise ValueError(f"harmonizer weights are only used in 'fixed' mode, not {mode!r}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"harmonizer weights must be non-negative; got {weights}")
        scales = dict(regularizer_scales or {})
        if set(scales) - set(tasks) or any(v <= 0 for v in scales.values()):
            raise ValueError(
                f"regularizer scales must be > 0 and name known tasks {list(tasks)}; got {scales}"
            )
        if gradnorm_alpha < 0:
            raise ValueError(f"gradnorm_alpha must be >= 0; got {gradnorm_alpha}")
        self.tasks = tasks
        self.mode = mode
        self.gradnorm_alpha = gradnorm_alpha
        # Only the learnable modes own parameters, so 'fixed'/'off' add nothing to the optimizer.
        if mode in ("rectified", "unrectified"):
            self.log_sigma = nn.Parameter(torch.zeros(len(tasks)))
        else:
            self.register_parameter("log_sigma", None)
        if mode == "gradnorm":
            self.gradnorm_weights = nn.Parameter(torch.ones(len(tasks)))
            # L_i(0), GradNorm's reference for each task's training rate; NaN until the first update.
            self.register_buffer("initial_losses", torch.full((len(tasks),), float("nan")))
        else:
            self.register_parameter("gradnorm_weights", None)
        fixed = [float(weights.get(t, 1.0)) if mode == "fixed" else 1.0 for t in tasks]
        self.register_buffer("fixed_weights", torch.tensor(fixed), persistent=False)
        reg = [float(scales.get(t, 1.0)) for t in tasks]
        self.register_buffer("regularizer_scales", torch.tensor(reg), persistent=False)

    @property
    def learnable(self) -> bool:
        """Whether the weights are learned (they see the tasks' losses as the world model defines them)."""
        return self.mode in ("rectified", "unrectified", "gradnorm")

    @property
    def needs_grad_norms(self) -> bool:
        """Whether :meth:`forward` needs each task's gradient norm on the shared parameters (GradNorm)."""
        return self.mode == "gradnorm"

    def task_weights(self) -> Tensor:
        """The weight 1/sigma_i of each task, in ``tasks`` order."""
        if self.log_sigma is not None:
            return torch.exp(-self.log_sigma)
        if self.gradnorm_weights is not None:
            return self.gradnorm_weights
        return self.fixed_weights

    def sigmas(self) -> Tensor:
        return 1.0 / self.task_weights()

    def forward(
        self, losses: Mapping[str, Tensor], grad_norms: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the harmonized total (regulariser included) and detached per-task metrics.

        ``grad_norms``: each task's unweighted gradient norm on the shared parameters (``gradnorm`` only,
        :func:`hwm.models.gradnorm.task_gradient_norms`).
        """
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise KeyError(f"harmonizer needs losses for {missing}; got {sorted(losses)}")
        device = self.fixed_weights.device
        values = torch.stack(
            [torch.as_tensor(losses[t], device=device).float().reshape(()) for t in self.tasks]
        )
        extra: dict[str, Tensor] = {}
        s = self.log_sigma
        if self.mode == "gradnorm":
            terms, extra = self._gradnorm_terms(values, grad_norms)
        elif s is None:  # fixed, off
            terms = values * self.fixed_weights
        elif self.mode == "rectified":
            # softplus(s) = log(1 + exp(s)) = log(1 + sigma), stable for any s.
            terms = values * torch.exp(-s) + self.regularizer_scales * F.softplus(s)
        else:  # unrectified
            terms = values * torch.exp(-s) + self.regularizer_scales * s
        total = terms.sum()
        with torch.no_grad():
            # A copy: GradNorm's weights are the parameter itself, which the optimizer steps before logging.
            weights = self.task_weights().detach().clone()
            metrics: dict[str, Tensor] = dict(extra)
            for i, task in enumerate(self.tasks):
                metrics[f"weight_{task}"] = weights[i]
                if weights[i] > 0:  # a dropped task (weight 0) has no finite sigma
                    metrics[f"sigma_{task}"] = 1.0 / weights[i]
        return total, metrics

    def _gradnorm_terms(
        self, values: Tensor, grad_norms: Mapping[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """sum_i w_i L_i (the weights held constant there) plus GradNorm's loss, which trains the weights."""
        assert self.gradnorm_weights is not None
        if grad_norms is None or any(t not in grad_norms for t in self.tasks):
            raise KeyError(f"gradnorm needs the gradient norm of every task {list(self.tasks)}")
        norms = torch.stack([torch.as_tensor(grad_norms[t]).to(values).reshape(()) for t in self.tasks])
        # The previous step moved the weights off sum = tasks: back onto it before they are used.
        renormalize_(self.gradnorm_weights)
        if torch.isnan(self.initial_losses).any():
            self.initial_losses.copy_(values.detach())
        weights = self.gradnorm_weights
        grad_loss, target = gradnorm_loss(weights, values, norms, self.initial_losses, self.gradnorm_alpha)
        terms = values * weights.detach()
        terms = torch.cat([terms, grad_loss.reshape(1)])
        extra = {"gradnorm_loss": grad_loss.detach()}
        for i, task in enumerate(self.tasks):
            extra[f"grad_norm_{task}"] = norms[i]
            extra[f"weighted_grad_norm_{task}"] = (weights[i] * norms[i]).detach()
            extra[f"target_grad_norm_{task}"] = target[i]
        return terms, extra

    def weights(self) -> dict[str, float]:
        """Current weight 1/sigma_i of each task."""
        weights = self.task_weights().detach()
        return {task: float(weights[i]) for i, task in enumerate(self.tasks)}

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, mode={self.mode!r}"


def world_model_optimizers(
    world_model: nn.Module,
    harmonizer: Harmonizer,
    *,
    lr: float,
    eps: float,
    weight_decay: float,
    harmonizer_optimizer: HarmonizerOptimizer = "adam",
    harmonizer_lr: float | None = None,
) -> list[torch.optim.Optimizer]:
    """The world model's Adam, and the harmonizers' own SGD when ``harmonizer_optimizer`` is ``sgd``.

    With Adam the harmonizers join the world model's optimizer, as in the paper's code (one parameter group
    at ``lr``, or a second group at ``harmonizer_lr``); with SGD they get plain gradient steps at
    ``harmonizer_lr`` (default ``lr``). Adam is given L2 weight decay added to the gradient (not AdamW's
    decoupled decay), as the authors' PyTorch DreamerV2; DreamerV3 has no weight decay, where the two agree.
    """
    if harmonizer_optimizer not in OPTIMIZERS:
        raise ValueError(
            f"harmonizer optimizer must be one of {', '.join(OPTIMIZERS)}; got {harmonizer_optimizer!r}"
        )
    if harmonizer_lr is not None and harmonizer_lr <= 0:
        raise ValueError(f"harmonizer_lr must be > 0; got {harmonizer_lr}")
    model_params = list(world_model.parameters())
    harmonizer_params = list(harmonizer.parameters())
    own_lr = lr if harmonizer_lr is None else harmonizer_lr
    if harmonizer_optimizer == "sgd" and harmonizer_params:
        return [
            torch.optim.Adam(model_params, lr=lr, eps=eps, weight_decay=weight_decay),
            torch.optim.SGD(harmonizer_params, lr=own_lr),
        ]
    if harmonizer_lr is None or not harmonizer_params:
        # One group, as before the setting existed: checkpoints of either kind load into the other.
        return [torch.optim.Adam(model_params + harmonizer_params, lr=lr, eps=eps, weight_decay=weight_decay)]
    groups: list[dict[str, Any]] = [{"params": model_params}, {"params": harmonizer_params, "lr": own_lr}]
    return [torch.optim.Adam(groups, lr=lr, eps=eps, weight_decay=weight_decay)]


def check_harmonizer_precision(harmonizer_optimizer: str, precision: str) -> None:
    """The harmonizers' own SGD shares the world model's backward pass; under ``16-mixed`` the grad scaler
    updates its scale after each optimizer's step, so the second optimizer would unscale with the wrong one."""
    if harmonizer_optimizer == "sgd" and precision.startswith("16"):
        raise ValueError(
            "model.harmonizer_optimizer sgd does not work with trainer.precision 16-mixed (one backward pass, "
            "two grad-scaler steps); use bf16-mixed or 32-true"
        )
