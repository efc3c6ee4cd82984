"""A small U-Net (DDPM-style: residual blocks with GroupNorm and SiLU, a sinusoidal time embedding,
two resolutions below the input, skip connections), for tests and benchmarks of the engine on
image-shaped models. Random weights from a fixed seed: the hard case for top-k methods, a flat
top spectrum."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.n1 = nn.GroupNorm(min(8, cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2 = nn.GroupNorm(min(8, cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.t(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class SmallUNet(nn.Module):
    """eps-prediction U-Net on (B, channels, S, S) images, S divisible by 4; t is the (B,) time."""

    def __init__(self, channels: int = 3, width: int = 16, temb: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.temb = temb
        self.embed = nn.Sequential(nn.Linear(temb, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.d1 = ResBlock(width, width, temb)
        self.down1 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.d2 = ResBlock(2 * width, 2 * width, temb)
        self.down2 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * width, 2 * width, temb)
        self.u2 = ResBlock(4 * width, 2 * width, temb)
        self.u1 = ResBlock(3 * width, width, temb)
        self.out_norm = nn.GroupNorm(min(8, width), width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.temb // 2
        freqs = torch.exp(-math.log(1e4) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
        angles = 1000 * t[:, None] * freqs[None]
        return self.embed(torch.cat([angles.sin(), angles.cos()], dim=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t)
        h0 = self.d1(self.inp(x), emb)
        h1 = self.d2(self.down1(h0), emb)
        h = self.mid(self.down2(h1), emb)
        h = self.u2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), emb)
        h = self.u1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h0], 1), emb)
        return self.out(F.silu(self.out_norm(h)))


def unet(size: int = 32, width: int = 16) -> SmallUNet:
    """Factory for `tests/assets/unet.py:unet` specs (3 x size x size images)."""
    net = SmallUNet(width=width)
    net.sample_shape = (3, size, size)
    return net
