"""A denoiser with the form of a Gaussian mixture's: the tractable network of [L] (`spectra train
--network mixture`).

[L] explain the unimodal representation curve with networks parameterized as the optimal
denoiser of a mixture of low-rank Gaussians, whose class subspaces are learned. This module
learns a K-component mixture with zero-or-learned means mu_l, low-rank-plus-isotropic covariances
C_l = A_l A_l^T + s^2 I (A_l: D x r) and weights pi_l, and returns the exact posterior mean of
that mixture (theory.md 3.1), so that it can represent MoLRG exactly (r = K d, s -> 0: each
A_l spans the own class with scale 1 and the others with scale delta). In VE-equivalent
coordinates y = x/alpha, tau = sigma^2/alpha^2, with c = s^2 + tau and M_l = c I_r + A_l^T A_l:

    (C_l + tau I)^{-1} z = (z - A_l M_l^{-1} A_l^T z) / c                            (Woodbury)
    log N(y; mu_l, C_l + tau I) = -(z^T (C_l + tau I)^{-1} z + (D - r) log c + log det M_l) / 2 + const
    x0hat = sum_l w_l (y - tau (C_l + tau I)^{-1} (y - mu_l)),   w = softmax_l(log pi_l + log N_l)

and, as spectra train's networks do, it predicts eps = (y - x0hat)/sqrt(tau) from its inputs
c_in x and c_noise = log(tau)/8 (spectra.models.trained): y = c_in x sqrt(v + tau), v the data
variance the network was built for.

[L] Li, Zhang, Li, Chen, Zhu, Wang, Qu, "Understanding Representation Dynamics of Diffusion
Models via Low-Dimensional Modeling" (NeurIPS 2025).
"""

from __future__ import annotations

import math

import torch


class LowRankMixture(torch.nn.Module):
    """F(c_in x, c_noise) -> eps for samples of `dim` values (any shape, flattened): the posterior
    mean of a learned mixture of `components` Gaussians of rank `rank` plus an isotropic floor
    (module docstring); `variance` is v of the input scaling."""

    def __init__(self, dim: int, components: int, rank: int, variance: float) -> None:
        super().__init__()
        self.variance = float(variance)
        scale = math.sqrt(self.variance)
        self.factors = torch.nn.Parameter(torch.randn(components, dim, rank) * scale / math.sqrt(rank))
        self.means = torch.nn.Parameter(torch.zeros(components, dim))
        self.log_floor = torch.nn.Parameter(torch.full((), math.log(0.01 * self.variance)))
        self.logits = torch.nn.Parameter(torch.zeros(components))

    def denoise(self, y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """x0hat (B, D) at VE-equivalent points y (B, D) and variances tau (B,)."""
        a = self.factors  # (K, D, r)
        c = torch.exp(self.log_floor) + tau  # (B,)
        rank = a.shape[-1]
        gram = a.transpose(1, 2) @ a  # (K, r, r)
        m = c[:, None, None, None] * torch.eye(rank, dtype=y.dtype, device=y.device) + gram[None]
        chol = torch.linalg.cholesky(m)  # (B, K, r, r)
        z = y[:, None, :] - self.means[None]  # (B, K, D)
        proj = torch.einsum("kdr,bkd->bkr", a, z)
        solved = torch.cholesky_solve(proj[..., None], chol)[..., 0]  # M^{-1} A^T z
        inv_z = (z - torch.einsum("kdr,bkr->bkd", a, solved)) / c[:, None, None]
        maha = (z * inv_z).sum(-1)
        logdet = (y.shape[1] - rank) * torch.log(c)[:, None] + 2 * torch.log(
            torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        w = torch.softmax(torch.log_softmax(self.logits, 0) - 0.5 * (maha + logdet), dim=-1)
        return (w[..., None] * (y[:, None, :] - tau[:, None, None] * inv_z)).sum(1)

    def forward(self, scaled: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        flat = scaled.reshape(scaled.shape[0], -1)
        tau = torch.exp(8 * c_noise).to(flat.dtype)
        y = flat * torch.sqrt(self.variance + tau)[:, None]
        return ((y - self.denoise(y, tau)) / torch.sqrt(tau)[:, None]).reshape(scaled.shape)
