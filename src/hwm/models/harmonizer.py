"""Task harmonizers (HarmonyDream, Ma, Wu et al. 2024).

Each harmonized task i has a learnable s_i with sigma_i = exp(s_i), s_i = 0 at start. The world model
minimises sum_i L_i / sigma_i + c_i R(sigma_i), where R is log(1 + sigma) in the paper's rectified form. For a
fixed L the rectified optimum is sigma* = (L + sqrt(L^2 + 4L)) / 2, so the weight 1/sigma* grows only like
1/sqrt(L) for a small loss; the unrectified R = log(sigma) has sigma* = L and its weight 1/L explodes as L -> 0.
c_i is 1 except for HarmonyDream(V3)'s KL task (5/6, as the authors' Atari code weighs it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

HarmonizerMode = Literal["rectified", "unrectified", "fixed", "off"]
MODES: tuple[str, ...] = get_args(HarmonizerMode)


class Harmonizer(L.LightningModule):
    """Weights a mapping of per-task losses into one scalar.

    A LightningModule like the world model and the actor-critic, so each part is built, moved and tested
    alone; its parameters are stepped by the world-model optimizer (as in the paper's code), and only the
    agent trains and logs.

    Args:
        tasks: names of the harmonized tasks, in the order their parameters are stored.
        mode: ``rectified`` (L/sigma + log(1+sigma), the paper's), ``unrectified`` (L/sigma + log sigma),
            ``fixed`` (constant user weights: the DreamerV2 baseline) or ``off`` (every weight 1).
        weights: constant weights for ``fixed`` mode; tasks left out get 1.0.
        regularizer_scales: a factor on a task's regulariser (tasks left out get 1.0). HarmonyDream(V3)
            weighs its shared KL harmonizer, regulariser included, by dyn/(dyn+rep) = 5/6.
    """

    log_sigma: nn.Parameter | None  # the learnable modes only
    fixed_weights: Tensor
    regularizer_scales: Tensor

    def __init__(
        self,
        tasks: Sequence[str] = ("obs", "reward", "dynamics"),
        mode: HarmonizerMode = "rectified",
        weights: Mapping[str, float] | None = None,
        regularizer_scales: Mapping[str, float] | None = None,
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
        self.tasks = tasks
        self.mode = mode
        # Only the learnable modes own parameters, so 'fixed'/'off' add nothing to the optimizer.
        if mode in ("rectified", "unrectified"):
            self.log_sigma = nn.Parameter(torch.zeros(len(tasks)))
        else:
            self.register_parameter("log_sigma", None)
        fixed = [float(weights.get(t, 1.0)) if mode == "fixed" else 1.0 for t in tasks]
        self.register_buffer("fixed_weights", torch.tensor(fixed), persistent=False)
        reg = [float(scales.get(t, 1.0)) for t in tasks]
        self.register_buffer("regularizer_scales", torch.tensor(reg), persistent=False)

    def sigmas(self) -> Tensor:
        if self.log_sigma is None:
            return 1.0 / self.fixed_weights
        return self.log_sigma.exp()

    def forward(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the harmonized total (regulariser included) and detached per-task metrics."""
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise KeyError(f"harmonizer needs losses for {missing}; got {sorted(losses)}")
        device = self.fixed_weights.device
        values = torch.stack(
            [torch.as_tensor(losses[t], device=device).float().reshape(()) for t in self.tasks]
        )
        s = self.log_sigma
        if s is None:  # fixed, off
            terms = values * self.fixed_weights
        elif self.mode == "rectified":
            # softplus(s) = log(1 + exp(s)) = log(1 + sigma), stable for any s.
            terms = values * torch.exp(-s) + self.regularizer_scales * F.softplus(s)
        else:  # unrectified
            terms = values * torch.exp(-s) + self.regularizer_scales * s
        total = terms.sum()
        with torch.no_grad():
            sig = self.sigmas().detach()
            metrics: dict[str, Tensor] = {}
            for i, task in enumerate(self.tasks):
                metrics[f"weight_{task}"] = 1.0 / sig[i]
                metrics[f"sigma_{task}"] = sig[i]
        return total, metrics

    def weights(self) -> dict[str, float]:
        """Current weight 1/sigma_i of each task."""
        with torch.no_grad():
            sig = self.sigmas()
        return {task: float(1.0 / sig[i]) for i, task in enumerate(self.tasks)}

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, mode={self.mode!r}"
