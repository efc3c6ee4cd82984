"""Random-matrix predictions against Monte Carlo and theory.md 3.3-3.4's checks."""

import numpy as np
import pytest
from scipy.integrate import trapezoid

from spectra.theory.gaps import (
    gap_tau_max,
    gap_visibility,
    gap_width_max,
    intermediate_gap_width,
    manifold_gap_open_tau,
    manifold_gap_width,
    trivial_end_tau,
)
from spectra.theory.random_matrix import (
    MarchenkoPastur,
    bulks,
    mp_edges,
    normalized_jacobian_density,
    solve_stieltjes,
)


def covariance_eigenvalues(d, variances, rng):
    """Nonzero eigenvalues of C = F diag(variances) F^T, F iid N(0, 1/D): those of the m x m
    matrix diag(sqrt v) F^T F diag(sqrt v)."""
    f = rng.standard_normal((d, len(variances))) / np.sqrt(d)
    s = np.sqrt(variances)
    return np.linalg.eigvalsh((f * s).T @ (f * s))


def ks(samples, cdf):
    x = np.sort(samples)
    n = len(x)
    c = cdf(x)
    return max(np.max(np.arange(1, n + 1) / n - c), np.max(c - np.arange(n) / n))


def test_mp_edges_check():
    lo, hi = mp_edges(0.4)
    assert lo == pytest.approx(0.135, abs=5e-4) and hi == pytest.approx(2.665, abs=5e-4)


def test_mp_law_against_monte_carlo():
    rng = np.random.default_rng(0)
    ev = covariance_eigenvalues(2000, np.ones(800), rng)
    mp = MarchenkoPastur(0.4)
    assert ks(ev, mp.cdf) < 0.02
    assert mp.cdf(mp.support[1]) == pytest.approx(1.0) and mp.cdf(mp.support[0]) == 0.0
    # sampling follows the law too
    assert ks(mp.rvs(20000, np.random.default_rng(1)), mp.cdf) < 0.02


def test_stieltjes_reduces_to_mp():
    lam = np.linspace(0.01, 7, 800)
    sol = solve_stieltjes(lam, [2.0], [1.0], 0.4)
    mp = MarchenkoPastur(0.4, 2.0)
    assert sol.residual < 1e-8
    assert np.max(np.abs(sol.density - mp.pdf(lam))) < 1e-4 * mp.pdf(lam).max()


def test_two_variance_profile_against_monte_carlo():
    lam = np.linspace(1e-4, 3.5, 4000)
    sol = solve_stieltjes(lam, [1.0, 0.05], [0.5, 0.5], 0.4)
    assert sol.residual < 1e-8
    found = bulks(lam, sol.density)
    assert len(found) == 2, found
    cdf_table = np.concatenate([[0], np.cumsum((sol.density[1:] + sol.density[:-1]) / 2 * np.diff(lam))])
    assert cdf_table[-1] == pytest.approx(1.0, abs=2e-3)
    ev = covariance_eigenvalues(2000, np.r_[np.ones(400), 0.05 * np.ones(400)], np.random.default_rng(2))
    assert ks(ev, lambda x: np.interp(x, lam, cdf_table / cdf_table[-1])) < 0.02
    # the Monte Carlo eigenvalues fall in the two predicted bulks, half in each
    (lo1, hi1), (lo2, hi2) = found
    assert np.mean(ev < (hi1 + lo2) / 2) == pytest.approx(0.5, abs=1e-9)


def test_jacobian_density_mass():
    lam = np.linspace(1e-4, 3.5, 4000)
    sol = solve_stieltjes(lam, [1.0, 0.05], [0.5, 0.5], 0.4)
    mu = np.linspace(-1, 0, 20001)[1:-1]
    for tau in (0.01, 0.3, 5.0):
        dens = normalized_jacobian_density(mu, tau, lam, sol.density, 0.4)
        mass = trapezoid(dens, mu)
        assert mass == pytest.approx(0.4, abs=5e-3)  # continuous part; the atom carries 1 - c


def test_gap_formula_checks():
    a, b = 0.3, 2.0
    assert gap_tau_max(a, b) == pytest.approx(0.7746, abs=1e-4)
    assert gap_width_max(a, b) == pytest.approx(0.4417, abs=1e-4)
    assert intermediate_gap_width(gap_tau_max(a, b), a, b) == pytest.approx(gap_width_max(a, b))
    tau = np.geomspace(1e-3, 1e3, 2001)
    assert intermediate_gap_width(tau, a, b).max() <= gap_width_max(a, b) + 1e-15
    off, on = gap_visibility(a, b, 0.2)
    assert off * on == pytest.approx(gap_tau_max(a, b) ** 2, rel=1e-12)
    assert intermediate_gap_width([off, on], a, b) == pytest.approx([0.2, 0.2], rel=1e-12)
    assert gap_visibility(a, b, 0.5) is None


def test_gap_equals_the_distance_between_mapped_edges():
    """W(tau) is mu(b) - mu(a) with mu = -tau/(lambda + tau)."""
    a, b, tau = 0.3, 2.0, np.geomspace(1e-2, 1e2, 50)
    mapped = -tau / (b + tau) - (-tau / (a + tau))
    np.testing.assert_allclose(intermediate_gap_width(tau, a, b), mapped, rtol=1e-13)


def test_manifold_gap_and_trivial_phase():
    g, delta = 0.1, 0.05
    t_open = manifold_gap_open_tau(g, delta)
    assert manifold_gap_width(t_open, g) == pytest.approx(delta, rel=1e-12)
    lam_max, t_triv = 3.0, trivial_end_tau(3.0, delta)
    assert 1 - t_triv / (lam_max + t_triv) == pytest.approx(delta, rel=1e-12)


def test_theory_and_analysis_import_no_torch():
    """docs/design.md: theory and analysis are numpy/scipy only (compare-theory runs without torch)."""
    import subprocess
    import sys

    code = ("import sys, spectra.theory.linear, spectra.theory.gaps, spectra.theory.random_matrix, "
            "spectra.theory.manifold, spectra.theory.prediction, spectra.analysis, spectra.studies.phases; "
            "assert 'torch' not in sys.modules, 'theory imported torch'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
