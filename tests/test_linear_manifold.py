"""Acceptance: the engine reproduces the closed-form linear-manifold spectrum (theory.md 3.2).

Gaussian model D = 64, m = 20 in two variance groups, under ve, ddpm and vp-sqrt, targets
score, denoiser and eps. The reference is spectra.theory.linear (the formula); the model's
covariance eigenvalues come from numpy's SVD of its embedding, not from the engine.
"""

import numpy as np
import pytest
import torch
from conftest import rel_err

from spectra.jacobian import haar_directions, spectra_at
from spectra.models import linear_manifold
from spectra.schedules import Schedule
from spectra.theory.linear import linear_manifold_eigenvalues, linear_manifold_singular_values

D, VARIANCES = 64, np.r_[np.full(10, 1.0), np.full(10, 0.05)]

# Times spanning tau from ~1e-4 to ~1e2, where exact methods must hold to 1e-10.
WIDE = {"ve": [0.05, 0.3, 0.6, 0.9], "ddpm": [2, 40, 300, 900], "vp-sqrt": [0.02, 0.2, 0.6, 0.95]}
# Finite differences lose accuracy with the conditioning 1 + lambda/tau of the small values;
# these grids keep tau between ~1e-2 and ~1e2 (condition number <= ~100).
MODERATE = {"ve": [0.3, 0.5, 0.8], "ddpm": [60, 200, 600], "vp-sqrt": [0.15, 0.5, 0.9]}


def _model(schedule, embedding="orthonormal"):
    return linear_manifold(D, VARIANCES, Schedule(schedule), embedding=embedding, seed=3)


def _anchors(model, n=3):
    return torch.as_tensor(model.sample(n, np.random.default_rng(0)))


def _check(model, target, method, times, tol, step="auto", haar=False):
    lam = model.covariance_eigenvalues()
    x0 = _anchors(model)
    worst = 0.0
    for t in times:
        alpha, sigma = model.alpha_sigma(t)
        dirs = None
        if haar:
            rng = np.random.default_rng(7)
            dirs = torch.as_tensor(np.stack([haar_directions(D, rng) for _ in range(len(x0))]))
        res = spectra_at(model, alpha * x0, t, target, method, step, dirs, batch_size=100)
        sv = linear_manifold_singular_values(lam, D, alpha, sigma, target)
        ev = linear_manifold_eigenvalues(lam, D, alpha, sigma, target)
        for n in range(len(x0)):
            worst = max(worst, rel_err(res.singular_values[n], sv),
                        rel_err(res.sym_eigenvalues[n], ev))
    assert worst < tol, f"relative error {worst:.2e} >= {tol:.0e}"
    return worst


@pytest.mark.parametrize("schedule", ["ve", "ddpm", "vp-sqrt"])
@pytest.mark.parametrize("target", ["score", "denoiser", "eps"])
@pytest.mark.parametrize("method", ["jvp", "vjp"])
def test_exact_methods(schedule, target, method):
    _check(_model(schedule), target, method, WIDE[schedule], 1e-10)


@pytest.mark.parametrize("schedule", ["ve", "ddpm", "vp-sqrt"])
@pytest.mark.parametrize("target", ["score", "denoiser", "eps"])
def test_gaussian_embedding_jvp(schedule, target):
    """Random Gaussian embedding F: C's eigenvalues are no longer the variances."""
    model = _model(schedule, "gaussian")
    lam = model.covariance_eigenvalues()
    assert not np.allclose(np.sort(lam), np.sort(VARIANCES))
    _check(model, target, "jvp", WIDE[schedule], 1e-10)


@pytest.mark.parametrize("schedule", ["ve", "ddpm", "vp-sqrt"])
@pytest.mark.parametrize("target", ["score", "denoiser", "eps"])
def test_fd_central(schedule, target):
    _check(_model(schedule), target, "fd-central", MODERATE[schedule], 1e-6)


@pytest.mark.parametrize("schedule", ["ve", "ddpm", "vp-sqrt"])
@pytest.mark.parametrize("target", ["score", "denoiser", "eps"])
def test_fd_forward(schedule, target):
    _check(_model(schedule), target, "fd-forward", MODERATE[schedule], 1e-5)


@pytest.mark.parametrize("schedule", ["ve", "ddpm", "vp-sqrt"])
def test_paper_algorithm_2(schedule):
    """fd-central, step sigma, Haar directions ([V]'s Algorithm 2): exact for a linear score up to
    round-off, so it holds over the wide grid."""
    _check(_model(schedule), "score", "fd-central", WIDE[schedule], 1e-8, step="sigma", haar=True)


def test_haar_directions_are_orthogonal():
    q = haar_directions(32, np.random.default_rng(0))
    np.testing.assert_allclose(q.T @ q, np.eye(32), atol=1e-13)
