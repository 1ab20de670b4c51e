"""Building blocks shared by the world model and the actor-critic.

DreamerV2 blocks are Linear + ELU; DreamerV3 blocks are Linear (no bias) + LayerNorm(eps 1e-3) + SiLU. Both
bases build from the same functions with ``norm``/``act`` switched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypedDict

import torch
from torch import Tensor, nn


class Blocks(TypedDict):
    """A base's block style, handed to every builder below: LayerNorm or not, and the activation."""

    norm: bool
    act: type[nn.Module]


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Stops ``module``'s parameter gradients (not input gradients) inside the block, then restores them."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)


def block(in_dim: int, out_dim: int, *, norm: bool = False, act: type[nn.Module] = nn.ELU) -> list[nn.Module]:
    """Linear + act, or Linear (no bias: the norm's offset replaces it) + LayerNorm + act."""
    if norm:
        return [nn.Linear(in_dim, out_dim, bias=False), nn.LayerNorm(out_dim, eps=1e-3), act()]
    return [nn.Linear(in_dim, out_dim), act()]


def mlp(
    in_dim: int,
    out_dim: int,
    *,
    hidden: int,
    layers: int,
    act: type[nn.Module] = nn.ELU,
    norm: bool = False,
    out_scale: float = 1.0,
) -> nn.Sequential:
    """``layers`` hidden blocks of width ``hidden`` then a linear output.

    ``out_scale=0`` zero-initialises the output layer, as DreamerV3 does for its reward head and critic: they
    start by predicting 0 instead of a random large value that symexp would blow up.
    """
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += block(dim, hidden, norm=norm, act=act)
        dim = hidden
    out = nn.Linear(dim, out_dim)
    if out_scale != 1.0:
        with torch.no_grad():
            out.weight.mul_(out_scale)
            out.bias.mul_(out_scale)
    mods.append(out)
    return nn.Sequential(*mods)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (N, C, H, W) map, as DreamerV3's channels-last norm."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


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
    """64x64 RGB uint8 (C, H, W) -> flat embedding; 4 stride-2 kernel-4 convs of depth d, 2d, 4d, 8d.

    DreamerV2 pads nothing (64 -> 31 -> 14 -> 6 -> 2); DreamerV3 pads 'same' (64 -> 32 -> 16 -> 8 -> 4) and
    normalises each conv's channels (``norm``).
    """

    def __init__(
        self,
        *,
        depth: int = 32,
        in_channels: int = 3,
        norm: bool = False,
        act: type[nn.Module] = nn.ELU,
        same_padding: bool = False,
    ) -> None:
        super().__init__()
        chans = [in_channels, depth, 2 * depth, 4 * depth, 8 * depth]
        mods: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            mods.append(nn.Conv2d(cin, cout, 4, stride=2, padding=1 if same_padding else 0, bias=not norm))
            mods += [ChannelNorm(cout, eps=1e-3), act()] if norm else [act()]
        self.net = nn.Sequential(*mods)
        side = 4 if same_padding else 2
        self.out_dim = 8 * depth * side * side

    def forward(self, image: Tensor) -> Tensor:
        lead = image.shape[:-3]
        assert image.shape[-3:] == (3, 64, 64), f"expected (..., 3, 64, 64) images, got {tuple(image.shape)}"
        x = image.reshape(-1, *image.shape[-3:]).to(torch.get_default_dtype()) / 255.0 - 0.5
        # Channels-last: oneDNN's convs are faster on NHWC, and ChannelNorm's permute becomes a free view.
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).reshape(*lead, self.out_dim)


class ConvDecoder(nn.Module):
    """Feature -> mean image in [-0.5, 0.5] (C, 64, 64).

    DreamerV2 (``minres=1``): a linear to 1x1x32d, then transposed convs with kernels 5, 5, 6, 6.
    DreamerV3 (``minres=4``): a linear to 4x4x8d, then stride-2 kernel-4 'same' transposed convs
    8d -> 4d -> 2d -> d -> C, each but the last followed by ``norm`` and ``act``.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        depth: int = 32,
        out_channels: int = 3,
        norm: bool = False,
        act: type[nn.Module] = nn.ELU,
        minres: int = 1,
    ) -> None:
        super().__init__()
        if minres not in (1, 4):
            raise ValueError(f"ConvDecoder minres must be 1 (DreamerV2) or 4 (DreamerV3); got {minres}")
        self.out_channels, self.minres = out_channels, minres
        if minres == 1:
            self.start = (32 * depth, 1)
            chans, kernels, pad = [32 * depth, 4 * depth, 2 * depth, depth, out_channels], [5, 5, 6, 6], 0
        else:
            self.start = (8 * depth, 4)
            chans, kernels, pad = [8 * depth, 4 * depth, 2 * depth, depth, out_channels], [4, 4, 4, 4], 1
        self.linear = nn.Linear(in_dim, self.start[0] * self.start[1] ** 2)
        mods: list[nn.Module] = []
        for i, k in enumerate(kernels):
            last = i == len(kernels) - 1
            mods.append(
                nn.ConvTranspose2d(chans[i], chans[i + 1], k, stride=2, padding=pad, bias=last or not norm)
            )
            if not last:
                mods += [ChannelNorm(chans[i + 1], eps=1e-3), act()] if norm else [act()]
        self.net = nn.Sequential(*mods)

    def forward(self, feat: Tensor) -> Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat).reshape(-1, self.start[0], self.start[1], self.start[1])
        x = x.contiguous(memory_format=torch.channels_last)  # as in ConvEncoder
        return self.net(x).reshape(*lead, self.out_channels, 64, 64)


def flat_dim(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
