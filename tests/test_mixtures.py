"""Acceptance: empirical and gmm models at random points (theory.md 3.1).

Three independent computations must agree: the engine's Jacobian (jvp and vjp through the
exact score), the closed form J = sum_k r_k (-P_k + g_k g_k^T) - s s^T, and torch's Hessian of
log p_t (an exact score's Jacobian is the Hessian of the log-density).
"""

import numpy as np
import pytest
import torch

from spectra.jacobian import jacobian_at
from spectra.models import empirical, isotropic_gmm, molrg
from spectra.models.analytic import GaussianMixture
from spectra.schedules import Schedule
from spectra.theory.manifold import eigen_factor, random_orthonormal


def _general_gmm(schedule):
    """Three components with different means, ranks, and non-orthogonal bases."""
    rng = np.random.default_rng(5)
    d = 12
    means = rng.standard_normal((3, d))
    factors = [eigen_factor(rng.standard_normal((d, r)), rng.uniform(0.2, 2.0, r)) for r in (2, 5, 0)]
    bases = np.zeros((3, d, 5))
    eig = np.zeros((3, 5))
    for k, (u, e) in enumerate(factors):
        bases[k, :, : len(e)] = u
        eig[k, : len(e)] = e
    return GaussianMixture(np.array([0.2, 0.5, 0.3]), means, bases, eig, schedule)


MODELS = {
    "empirical": lambda s: empirical(np.random.default_rng(1).standard_normal((15, 10)), s),
    "molrg": lambda s: molrg(20, 3, 4, 0.2, s, seed=2),
    "isotropic": lambda s: isotropic_gmm(10, 4, 0.3, s, seed=3),
    "general": _general_gmm,
}


def _points(model, t, n=4):
    """Noisy points x_t = alpha x0 + sigma eps, plus midpoints between samples (where the
    posterior splits between components)."""
    rng = np.random.default_rng(11)
    alpha, sigma = model.alpha_sigma(t)
    x0 = model.sample(n, rng)
    mid = (x0[:-1] + x0[1:]) / 2
    x0 = np.concatenate([x0, mid])
    return torch.as_tensor(alpha * x0 + sigma * 0.1 * rng.standard_normal(x0.shape))


def _hessian_log_p(model, x, t):
    return torch.stack([
        torch.autograd.functional.hessian(lambda y: model.log_density(y[None], t)[0], xi)
        for xi in x
    ])


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("schedule,t", [("ve", 0.35), ("ddpm", 150), ("vp-sqrt", 0.4)])
def test_engine_equals_closed_form_equals_hessian(name, schedule, t):
    model = MODELS[name](Schedule(schedule))
    x = _points(model, t)
    closed = model.jacobian(x, t, "score")
    hess = _hessian_log_p(model, x, t)
    scale = closed.abs().max()
    assert (closed - hess).abs().max() / scale < 1e-10
    for method in ("jvp", "vjp"):
        eng = jacobian_at(model, x, t, "score", method, batch_size=37)
        assert (eng - closed).abs().max() / scale < 1e-10, method
    # the posterior weights are genuinely mixed at these points (the test is not one-component)
    if name != "molrg":
        _, log_joint, _ = model._terms(x.reshape(len(x), -1), t)
        r = torch.softmax(log_joint, -1)
        assert (r.max(-1).values < 1 - 1e-6).any()


@pytest.mark.parametrize("target", ["denoiser", "eps"])
def test_other_targets_follow_the_scalar_relations(target):
    """J_x0 = (I + sigma^2 J_score)/alpha and J_eps = -sigma J_score (theory.md 2), via the engine."""
    s = Schedule("vp-sqrt")
    model, t = MODELS["general"](s), 0.5
    x = _points(model, t)
    alpha, sigma = model.alpha_sigma(t)
    j_score = _hessian_log_p(model, x, t)
    eye = torch.eye(j_score.shape[-1], dtype=j_score.dtype)
    expected = (eye + sigma**2 * j_score) / alpha if target == "denoiser" else -sigma * j_score
    got = jacobian_at(model, x, t, target, "jvp")
    assert (got - expected).abs().max() / expected.abs().max() < 1e-10


def test_empirical_score_is_the_posterior_mean_formula():
    """s(x) = (alpha sum_i r_i x_i - x)/sigma^2 with r = softmax(-|x - alpha x_i|^2 / (2 sigma^2))."""
    pts = np.random.default_rng(0).standard_normal((6, 5))
    model = empirical(pts, Schedule("ve"))
    t = 0.4
    alpha, sigma = model.alpha_sigma(t)
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = torch.as_tensor(pts)
    logits = -((x[:, None] - alpha * p[None]) ** 2).sum(-1) / (2 * sigma**2)
    r = torch.softmax(logits, -1)
    expected = (alpha * r @ p - x) / sigma**2
    torch.testing.assert_close(model.predict(x, t), expected, rtol=1e-12, atol=0)


def test_molrg_covariance_eigenvalues():
    model = molrg(20, 3, 4, 0.2, Schedule("ve"), seed=2)
    for k in range(3):
        c = model.bases[k] @ np.diag(model.eigenvalues[k]) @ model.bases[k].T
        ev = np.sort(np.linalg.eigvalsh(c))[::-1]
        np.testing.assert_allclose(ev[:4], 1.0, atol=1e-12)
        np.testing.assert_allclose(ev[4:12], 0.04, atol=1e-12)
        np.testing.assert_allclose(ev[12:], 0.0, atol=1e-12)


def test_samples_have_the_model_covariance():
    s = Schedule("ve")
    model = GaussianMixture(
        np.ones(1), np.zeros((1, 6)), random_orthonormal(6, 3, np.random.default_rng(0))[None],
        np.array([[2.0, 1.0, 0.5]]), s,
    )
    x = model.sample(200_000, np.random.default_rng(1))
    cov = x.T @ x / len(x)
    expected = model.bases[0] @ np.diag(model.eigenvalues[0]) @ model.bases[0].T
    assert np.abs(cov - expected).max() < 0.03
