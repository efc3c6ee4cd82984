"""The networks `spectra train` trains, and the ScoreModel of a trained checkpoint.

Two networks (`NETWORKS`, built by name from a checkpoint's config, never unpickled): the small
U-Net of spectra.models.unet for image-shaped samples, and [V]'s residual MLP for flat ones (or any
shape, flattened). The residual MLP is an input layer, `depth` residual blocks of two linear layers
with SiLU, each block shifted by a learned embedding of the noise level, and an output layer. It
predicts eps (theory.md 2) with an input scaling that keeps its inputs O(1) at every noise level:

    epshat(x, t) = F(c_in x, c_noise),   c_in = 1 / sqrt(alpha^2 v + sigma^2),
    c_noise = log(tau) / 8 = log(sigma / alpha) / 4,

where v is the data's mean variance per coordinate (measured on samples, stored in the config).
The noise level enters through sin(omega_k c_noise), cos(omega_k c_noise) with omega_k = k pi / 4,
k = 1..16 (spectra.train says why). Reading a checkpoint into this model is spectra.models.specs'
job; writing one is spectra.train's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from spectra.models.base import ScoreModel
from spectra.models.lowrank import LowRankMixture
from spectra.models.network import NetworkScoreModel
from spectra.models.unet import SmallUNet
from spectra.schedules import Schedule

#: the networks spectra train builds, by the name a checkpoint records
NETWORKS = ("ResidualMLP", "SmallUNet", "LowRankMixture")
#: the hidden width of each when --width is not given
DEFAULT_WIDTH = {"ResidualMLP": 128, "SmallUNet": 32, "LowRankMixture": 16}


class ResidualMLP(torch.nn.Module):
    """F(y, c_noise): y (B, *shape) with prod(shape) = dim, c_noise (B,) -> (B, *shape) (flattened
    inside); see the module docstring."""

    def __init__(self, dim: int, width: int = 128, depth: int = 2, n_freq: int = 16) -> None:
        super().__init__()
        self.freqs = torch.nn.Parameter(torch.arange(1, n_freq + 1, dtype=torch.float32) * math.pi / 4,
                                        requires_grad=False)
        self.embed = torch.nn.Sequential(torch.nn.Linear(2 * n_freq, width), torch.nn.SiLU(),
                                         torch.nn.Linear(width, width))
        self.inp = torch.nn.Linear(dim, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleList([torch.nn.Linear(width, width), torch.nn.Linear(width, width)])
            for _ in range(depth)
        )
        self.out = torch.nn.Linear(width, dim)

    def forward(self, y: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise[:, None] * self.freqs
        emb = self.embed(torch.cat([angles.sin(), angles.cos()], dim=1))
        h = self.inp(y.reshape(y.shape[0], -1))
        for first, second in self.blocks:
            h = h + second(torch.nn.functional.silu(first(torch.nn.functional.silu(h + emb))))
        return self.out(torch.nn.functional.silu(h)).reshape(y.shape)


class TrainedScoreModel(NetworkScoreModel):
    """A `spectra train` network: eps prediction through the input scaling of the module docstring,
    with the data it was trained on: its training points (n_train, D) when it had a finite set,
    else fresh samples of the data spec."""

    def __init__(self, net: torch.nn.Module, schedule: Schedule, config: dict[str, Any], data: ScoreModel,
                 spec: str = "", train_points: np.ndarray | None = None) -> None:
        super().__init__(net, schedule, "eps", shape=sample_shape(config), spec=spec,
                         interface="spectra-train")
        self.train_config = config
        self.data = data
        self.train_points = train_points

    def predict_from(self, x: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor,
                     sigma: torch.Tensor) -> torch.Tensor:
        """The module at c_in x and c_noise (computed in float64 from alpha and sigma, 0-d)."""
        scale = c_in(alpha, sigma, self.train_config["data_variance"]).to(x.dtype)
        level = c_noise(alpha, sigma).to(x.dtype).expand(x.shape[0])
        return self.module(x * scale, level)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Anchors: the first min(n, n_train) training points (as a data file of them gives),
        else n fresh samples of the data spec."""
        if self.train_points is None:
            return self.data.sample(n, rng)
        return self.train_points[:n].reshape(-1, *self.shape)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "kind": "trained", "train": self.train_config}

    def identity(self) -> dict[str, Any]:
        """The network's identity and the input scaling its values depend on."""
        return {**super().identity(), "data_variance": self.train_config["data_variance"]}


def c_in(alpha: torch.Tensor, sigma: torch.Tensor, variance: float) -> torch.Tensor:
    """1 / sqrt(alpha^2 v + sigma^2): unit-scale network inputs."""
    return torch.rsqrt(alpha**2 * variance + sigma**2)


def c_noise(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log(sigma / alpha) / 4 = log(tau) / 8: the noise-level input."""
    return torch.log(sigma / alpha) / 4


def sample_shape(config: dict[str, Any]) -> tuple[int, ...]:
    """The sample shape a checkpoint's config records (`shape`; before it, flat (dim,)); ValueError
    unless it is a list of positive integers."""
    shape = config.get("shape", [config["dim"]])
    if not isinstance(shape, list) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"sample shape {shape!r}")
    return tuple(shape)


def build_network(network: dict[str, Any], shape: tuple[int, ...]) -> torch.nn.Module:
    """The untrained network a config's `network` table names ({"class", "width", "depth"}) for
    samples of `shape`; ValueError/KeyError/TypeError for a table that names no such network."""
    name = network["class"]
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}")
    if name == "SmallUNet":
        return SmallUNet(shape, int(network["width"]))
    if name == "LowRankMixture":
        return LowRankMixture(math.prod(shape), int(network["depth"]), int(network["width"]),
                              float(network["variance"]))
    return ResidualMLP(math.prod(shape), int(network["width"]), int(network["depth"]))


def count_parameters(network: dict[str, Any], shape: tuple[int, ...]) -> int:
    """The parameters of build_network(network, shape), counted on the meta device (nothing is
    allocated, so a hostile or mistaken width is measured before it is built)."""
    with torch.device("meta"):
        # the mixture's input scaling sets no size: counted before the data's variance is known
        sized = {"variance": 1.0, **network}
        return sum(p.numel() for p in build_network(sized, shape).parameters())
