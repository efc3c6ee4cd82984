"""The edge-of-memorization crossover of [B] (theory.md 3.7) against independent computations."""

import numpy as np
import pytest
from scipy.optimize import brentq

from spectra.theory.memorization import (
    critical_count,
    critical_fraction,
    generalizing_excess_loss,
    memorizing_excess_loss,
    paper_grid,
    psi,
    vp_sqrt,
)


def paper_times():
    """[B]'s grid written out by hand: t_l = 0.999 - 0.998 l/25, l = 0..25."""
    return np.array([0.999 - 0.998 * k / 25 for k in range(26)])


def test_paper_grid_and_schedule():
    t = paper_grid()
    np.testing.assert_allclose(t, paper_times(), rtol=0, atol=1e-15)
    assert t[0] == 0.999 and abs(t[-1] - 0.001) < 1e-15
    alpha, sigma = vp_sqrt(t)
    np.testing.assert_allclose(alpha, np.sqrt(1 - t**2), rtol=1e-15)
    np.testing.assert_array_equal(sigma, t)


@pytest.mark.parametrize("C, expected", [(1.0, 0.660), (1.5, 0.774), (2.0, 0.830)])
def test_paper_grid_check(C, expected):
    t = paper_times()
    alpha, sigma = np.sqrt(1 - t**2), t
    frac = critical_fraction(alpha, sigma, variance=1.0, C=C)
    assert round(float(frac), 3) == expected
    # with s*^2 = 1, 1/(psi + 1) = sigma^2/(alpha^2 + sigma^2) = t^2 on this schedule
    assert abs(float(frac) - (1 - np.mean(t**2) / C)) < 1e-12


def test_array_C_broadcasts():
    t = paper_times()
    alpha, sigma = np.sqrt(1 - t**2), t
    cs = np.array([1.0, 1.5, 2.0])
    frac = critical_fraction(alpha, sigma, C=cs)
    assert frac.shape == (3,)
    np.testing.assert_allclose(frac, 1 - np.mean(t**2) / cs, rtol=0, atol=1e-12)
    counts = critical_count(1000, alpha, sigma, C=cs)
    np.testing.assert_allclose(counts, 1000 * (1 - np.mean(t**2) / cs), rtol=0, atol=1e-9)
    one = critical_count(1000, alpha, sigma, C=1.0)
    assert isinstance(one, float) and abs(one - 1000 * (1 - np.mean(t**2))) < 1e-9


@pytest.mark.parametrize("C", [1.0, 1.3, 2.0])
def test_crossover_matches_root_of_loss_difference(C):
    """Weighted, variance != 1, dim != 1: solve sum_t lam [gen] = sum_t lam [mem(M/N)] directly."""
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.01, 0.99, 40))
    alpha, sigma = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)  # a cosine schedule, not vp-sqrt
    lam = rng.uniform(0.0, 3.0, t.size)
    var, dim = 0.37, 7

    gen = 0.0
    for a, s, w in zip(alpha, sigma, lam, strict=True):
        snr = (a / s) ** 2
        gen += w * dim * var * s**2 / (a**2 * var + s**2)  # = d var / (snr var + 1)
        assert abs(dim * var / (snr * var + 1) - dim * var * s**2 / (a**2 * var + s**2)) < 1e-12

    def difference(m_over_n):
        return gen - sum(w * C * (1 - m_over_n) * dim * var for w in lam)

    root = brentq(difference, 0.0, 1.0, xtol=1e-15, rtol=1e-15)
    frac = critical_fraction(alpha, sigma, variance=var, C=C, weights=lam)
    assert abs(float(frac) - root) < 1e-10
    # and the module's own losses cross there too
    loss_gen = np.sum(lam * generalizing_excess_loss(alpha, sigma, variance=var, dim=dim))
    loss_mem = np.sum(lam * memorizing_excess_loss(root, variance=var, dim=dim, C=C))
    assert abs(loss_gen - loss_mem) < 1e-9 * loss_gen
    assert abs(critical_count(250, alpha, sigma, variance=var, C=C, weights=lam) - 250 * root) < 1e-7


def test_weights_scale_free():
    t = paper_times()
    alpha, sigma = vp_sqrt(t)
    lam = 1 + t
    a = critical_fraction(alpha, sigma, weights=lam)
    b = critical_fraction(alpha, sigma, weights=5 * lam)
    assert abs(float(a) - float(b)) < 1e-14


@pytest.mark.parametrize("C", [1.0, 1.5, 2.0])
def test_limits(C):
    t = np.linspace(0.1, 0.9, 9)
    # tiny noise everywhere: psi ~ 1e16, the generalizing excess vanishes, M*/N -> 1
    frac = critical_fraction(np.ones_like(t), 1e-8 * t, C=C)
    assert abs(float(frac) - 1) < 1e-12
    # huge noise everywhere: psi ~ 1e-16, excess -> d s*^2, M*/N -> 1 - 1/C
    frac = critical_fraction(1e-8 * t, np.ones_like(t), variance=3.0, C=C)
    assert abs(float(frac) - (1 - 1 / C)) < 1e-12


def test_excess_losses_by_hand():
    # alpha = 0.6, sigma = 0.8: psi = 0.36/0.64 = 0.5625; s*^2 = 2, d = 3: 6/(1.125 + 1) = 2.8235...
    assert abs(float(psi(0.6, 0.8)) - 0.5625) < 1e-15
    assert abs(float(generalizing_excess_loss(0.6, 0.8, variance=2.0, dim=3)) - 6 / 2.125) < 1e-14
    # alpha = sigma: psi = 1; s*^2 = 1, d = 10: 10/2 = 5
    np.testing.assert_allclose(generalizing_excess_loss([0.5, 2.0], [0.5, 2.0], dim=10), [5.0, 5.0])
    # M/N = 0.25, C = 1.5, s*^2 = 2, d = 4: 1.5 * 0.75 * 8 = 9
    assert abs(float(memorizing_excess_loss(0.25, variance=2.0, dim=4, C=1.5)) - 9.0) < 1e-14
    np.testing.assert_allclose(memorizing_excess_loss([0.0, 1.0], C=2.0), [2.0, 0.0])


@pytest.mark.parametrize("call", [
    lambda: psi([1.0, 2.0], [1.0]),
    lambda: psi(0.0, 1.0),
    lambda: psi(1.0, -1.0),
    lambda: generalizing_excess_loss(1.0, 1.0, variance=0.0),
    lambda: generalizing_excess_loss(1.0, 1.0, dim=-1),
    lambda: memorizing_excess_loss(1.5),
    lambda: memorizing_excess_loss(0.5, C=0.0),
    lambda: critical_fraction([1.0, 1.0], [0.5, 0.5], C=-1.0),
    lambda: critical_fraction([1.0, 1.0], [0.5, 0.5], C=[1.0, 0.0]),
    lambda: critical_fraction([1.0, 1.0], [0.5, 0.5], variance=-2.0),
    lambda: critical_fraction([1.0, 1.0], [0.5, 0.5], weights=[1.0]),
    lambda: critical_fraction([1.0, 1.0], [0.5, 0.5], weights=[1.0, -1.0]),
    lambda: critical_fraction([1.0, 1.0], [0.5, 0.5], weights=[0.0, 0.0]),
    lambda: critical_fraction([1.0, 1.0], [0.5, 0.5, 0.5]),
    lambda: critical_fraction([], []),
    lambda: critical_fraction([[1.0]], [[0.5]]),
    lambda: critical_fraction([1.0, np.nan], [0.5, 0.5]),
    lambda: critical_count(0, [1.0], [0.5]),
    lambda: critical_count(2.5, [1.0], [0.5]),
    lambda: paper_grid(n=1),
    lambda: paper_grid(t_max=0.1, t_min=0.5),
    lambda: vp_sqrt(1.0),
])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
