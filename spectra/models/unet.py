"""The small U-Net `spectra train` trains on image-shaped data (sample shape (C, H, W) or (H, W)).

Two resolutions, H x W and ceil(H/2) x ceil(W/2), joined by skip connections (Ronneberger et al.,
MICCAI 2015; the DDPM U-Net of Ho et al., NeurIPS 2020, without attention or normalization, which
a few thousand 8 x 8 images do not need):

    h1 = R1(conv_in(y))                       (width w, H x W)
    h2 = R2(pool(h1))                         (2w, H/2 x W/2; pool: 2 x 2 average, ceil)
    h2 = R4(cat[R3(h2), h2])                  (2w)
    out = conv_out(R5(cat[up(h2), h1]))       (w, then C channels; up: nearest to H x W)

Each R is a residual block x + conv(silu(conv(silu(x)) + E e)) (a 1 x 1 convolution on the skip
where the widths differ), shifted per channel by a learned projection E of the noise embedding e,
itself an MLP of sin(omega_k c_noise), cos(omega_k c_noise) as in spectra.models.trained. Every
operation has forward- and reverse-mode rules in torch.func, so all of spectra's Jacobian paths
run on it.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


class _Block(torch.nn.Module):
    """x (B, c_in, H, W), e (B, E) -> (B, c_out, H, W): skip(x) + conv2(silu(conv1(silu(x)) + proj(e)))."""

    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, padding=1)
        self.proj = torch.nn.Linear(emb, c_out)
        self.skip = torch.nn.Conv2d(c_in, c_out, 1) if c_in != c_out else torch.nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(x)) + self.proj(e)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(h))


class SmallUNet(torch.nn.Module):
    """F(y, c_noise): y (B, *shape), c_noise (B,) -> (B, *shape); see the module docstring.

    Args:
        shape: the sample shape, (C, H, W) or (H, W) (one channel).
        width: w, the channels at full resolution (2w at half resolution).
        n_freq: frequencies omega_k = k pi / 4, k = 1..n_freq, of the noise embedding.
    """

    def __init__(self, shape: tuple[int, ...], width: int = 32, n_freq: int = 16) -> None:
        super().__init__()
        if len(shape) not in (2, 3):
            raise ValueError(f"SmallUNet takes samples of shape (C, H, W) or (H, W), not {shape}")
        self.sample_shape = tuple(int(s) for s in shape)
        channels = self.sample_shape[0] if len(shape) == 3 else 1
        self.grid = (channels, *self.sample_shape[-2:])
        w, emb = width, 4 * width
        self.freqs = torch.nn.Parameter(torch.arange(1, n_freq + 1, dtype=torch.float32) * math.pi / 4,
                                        requires_grad=False)
        self.embed = torch.nn.Sequential(torch.nn.Linear(2 * n_freq, emb), torch.nn.SiLU(),
                                         torch.nn.Linear(emb, emb))
        self.inp = torch.nn.Conv2d(channels, w, 3, padding=1)
        self.down1 = _Block(w, w, emb)
        self.down2 = _Block(w, 2 * w, emb)
        self.mid = _Block(2 * w, 2 * w, emb)
        self.up2 = _Block(4 * w, 2 * w, emb)
        self.up1 = _Block(3 * w, w, emb)
        self.out = torch.nn.Conv2d(w, channels, 3, padding=1)

    def forward(self, y: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise[:, None] * self.freqs
        e = self.embed(torch.cat([angles.sin(), angles.cos()], dim=1))
        x = y.reshape(y.shape[0], *self.grid)
        h1 = self.down1(self.inp(x), e)
        h2 = self.down2(F.avg_pool2d(h1, 2, ceil_mode=True), e)
        h2 = self.up2(torch.cat([self.mid(h2, e), h2], dim=1), e)
        up = F.interpolate(h2, size=self.grid[1:], mode="nearest")
        h = self.up1(torch.cat([up, h1], dim=1), e)
        return self.out(F.silu(h)).reshape(y.shape)
