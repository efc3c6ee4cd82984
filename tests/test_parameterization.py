"""Acceptance: one analytic model wrapped as eps-, x0-, v- and score-predicting networks gives the
same three targets and the same Jacobians (< 1e-12, float64)."""

import numpy as np
import pytest
import torch

from spectra.jacobian import jacobian_at
from spectra.models import NetworkScoreModel, empirical, linear_manifold
from spectra.models.parameterization import from_score, to_target
from spectra.schedules import Schedule


class AnalyticAsNetwork(torch.nn.Module):
    """A bare module predicting `parameterization`, computed from an exact score.
    Called as module(x, t) with t a (B,) tensor of schedule times, like any user network."""

    def __init__(self, model, parameterization):
        super().__init__()
        self.model, self.parameterization = model, parameterization

    def forward(self, x, t):
        time = float(t[0])
        alpha, sigma = self.model.alpha_sigma(time)
        score = self.model.predict(x, time)
        return from_score(score, x, alpha, sigma, self.parameterization)


MODELS = {
    "linear": lambda s: linear_manifold(16, np.r_[np.ones(3), 0.1 * np.ones(3)], s, seed=0),
    "empirical": lambda s: empirical(np.random.default_rng(1).standard_normal((7, 16)), s),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("schedule,t", [("ve", 0.4), ("ddpm", 300), ("vp-sqrt", 0.3),
                                        ("edm", 0.5), ("vp", 0.2)])
@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_wrapped_targets_agree(name, schedule, t, param):
    model = MODELS[name](Schedule(schedule))
    net = NetworkScoreModel(AnalyticAsNetwork(model, param), model.schedule, param)
    rng = np.random.default_rng(2)
    alpha, sigma = model.alpha_sigma(t)
    x0 = model.sample(4, rng)
    x0 = np.concatenate([x0, (x0[:-1] + x0[1:]) / 2])  # midpoints: mixed posteriors
    x = torch.as_tensor(alpha * x0 + 0.1 * sigma * rng.standard_normal(x0.shape))
    for target in ("score", "denoiser", "eps"):
        ref = model.target(x, t, target)
        got = net.target(x, t, target)
        assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-12, target
        j_ref = model.jacobian(x, t, target)
        j_got = jacobian_at(net, x, t, target, "jvp")
        assert ((j_got - j_ref).abs().max() / j_ref.abs().max()).item() < 1e-12, target


def test_conversions_roundtrip_with_a_non_unit_schedule():
    """v formulas hold for alpha^2 + sigma^2 != 1 (VE): x0 and eps recovered from v exactly."""
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    alpha, sigma = 1.0, 3.0
    x = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    torch.testing.assert_close(to_target(v, x, alpha, sigma, "v", "denoiser"), x0)
    torch.testing.assert_close(to_target(v, x, alpha, sigma, "v", "eps"), eps)
    torch.testing.assert_close(to_target(eps, x, alpha, sigma, "eps", "denoiser"), x0)
    torch.testing.assert_close(to_target(x0, x, alpha, sigma, "x0", "eps"), eps)
