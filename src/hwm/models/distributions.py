"""DreamerV3's value codecs and categorical smoothing: symlog/symexp, two-hot regression, unimix.

Transforms and codecs rather than losses: the RSSM, the reward head and the critic use them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


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
