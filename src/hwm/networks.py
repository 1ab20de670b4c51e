"""Building blocks shared by the world model and the actor-critic (DreamerV2 shapes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(
    in_dim: int, out_dim: int, *, hidden: int, layers: int, act: type[nn.Module] = nn.ELU
) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` then a linear output."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden), act()]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


class NormGRUCell(nn.Module):
    """DreamerV2's GRU cell: one fused linear, LayerNorm on the gates, update gate biased towards keeping.

    The -1 bias on the update gate makes the initial cell copy its state, which DreamerV2 found stabilises
    long sequences; one linear over [input, state] is also fewer kernel launches than nn.GRUCell + norm.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(input_size + hidden_size, 3 * hidden_size, bias=False)
        self.norm = nn.LayerNorm(3 * hidden_size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


class ConvEncoder(nn.Module):
    """64x64 RGB uint8 (C, H, W) -> flat embedding; 4 stride-2 convs of depth d, 2d, 4d, 8d."""

    def __init__(self, *, depth: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        chans = [in_channels, depth, 2 * depth, 4 * depth, 8 * depth]
        mods: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            mods += [nn.Conv2d(cin, cout, 4, stride=2), nn.ELU()]
        self.net = nn.Sequential(*mods)
        self.out_dim = 8 * depth * 2 * 2

    def forward(self, image: Tensor) -> Tensor:
        lead = image.shape[:-3]
        assert image.shape[-3:] == (3, 64, 64), f"expected (..., 3, 64, 64) images, got {tuple(image.shape)}"
        x = image.reshape(-1, *image.shape[-3:]).to(torch.get_default_dtype()) / 255.0 - 0.5
        return self.net(x).reshape(*lead, self.out_dim)


class ConvDecoder(nn.Module):
    """Feature -> mean image in [-0.5, 0.5] (C, 64, 64); transposed convs with kernels 5, 5, 6, 6."""

    def __init__(self, in_dim: int, *, depth: int = 32, out_channels: int = 3) -> None:
        super().__init__()
        self.depth = depth
        self.out_channels = out_channels
        self.linear = nn.Linear(in_dim, 32 * depth)
        chans = [32 * depth, 4 * depth, 2 * depth, depth, out_channels]
        kernels = [5, 5, 6, 6]
        mods: list[nn.Module] = []
        for i, k in enumerate(kernels):
            mods.append(nn.ConvTranspose2d(chans[i], chans[i + 1], k, stride=2))
            if i < len(kernels) - 1:
                mods.append(nn.ELU())
        self.net = nn.Sequential(*mods)

    def forward(self, feat: Tensor) -> Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat).reshape(-1, 32 * self.depth, 1, 1)
        return self.net(x).reshape(*lead, self.out_channels, 64, 64)


def flat_dim(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
