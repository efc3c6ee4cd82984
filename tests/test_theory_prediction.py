"""Predictions on a tau grid (spectra.theory.prediction) and measurements (spectra.analysis),
checked against the formulas of theory.md 3.2-3.4 computed here from scratch."""

import numpy as np
import pytest
from conftest import rel_err

from spectra import analysis
from spectra.theory.gaps import gap_visibility, intermediate_gap_width
from spectra.theory.manifold import LinearManifold
from spectra.theory.prediction import LinearTheory
from spectra.theory.random_matrix import bulks, solve_stieltjes

TAU = np.geomspace(1e-4, 1e3, 60)


def _gaussian_eigs(d, variances, seed):
    """Eigenvalues of F diag(v) F^T, F iid N(0, 1/D) from the seed, by a dense eigensolver."""
    f = np.random.default_rng(seed).standard_normal((d, len(variances))) / np.sqrt(d)
    return np.sort(np.linalg.eigvalsh((f * variances) @ f.T))[::-1]


def test_exact_finite_d_eigenvalues_for_both_embeddings():
    v = np.r_[np.full(10, 2.0), np.full(15, 0.1)]
    gauss = LinearTheory.from_manifold(LinearManifold(60, v, "gaussian", seed=4))
    lam = np.clip(_gaussian_eigs(60, v, 4), 0, None)
    lam[25:] = 0
    assert rel_err(gauss.covariance_eigenvalues, lam) < 1e-12
    assert gauss.m == 25
    ortho = LinearTheory.from_manifold(LinearManifold(60, v, "orthonormal", seed=4))
    np.testing.assert_array_equal(ortho.tangent_eigenvalues, np.sort(v)[::-1])
    for theory, eigs in ((gauss, lam), (ortho, np.r_[np.sort(v)[::-1], np.zeros(35)])):
        mu = theory.eigenvalues(TAU)
        exact = -TAU[:, None] / (eigs[None] + TAU[:, None])
        assert rel_err(mu, exact) < 1e-13
        assert np.all(np.diff(mu, axis=1) <= 0)
        # the three targets, raw, at a VP-like point (alpha, sigma) = (0.8, 0.6): theory.md 3.2
        a, s, lam = 0.8, 0.6, eigs[:25]
        forms = {"score": (1 / (a**2 * lam + s**2), 1 / s**2),
                 "denoiser": (lam / (lam + s**2 / a**2) / a, 0.0),
                 "eps": (s / (a**2 * lam + s**2), 1 / s)}
        for target, (tangent, normal) in forms.items():
            exact = np.sort(np.r_[tangent, np.full(35, normal)])[::-1]
            assert rel_err(theory.singular_values([a], [s], target)[0], exact) < 1e-13


def test_density_is_the_silverstein_law_mapped_to_mu():
    v = np.r_[np.full(200, 1.0), np.full(200, 0.05)]
    theory = LinearTheory.from_manifold(LinearManifold(1000, v, "gaussian"))
    grid = -1 + (np.arange(4000) + 0.5) / 4000
    for tau in (0.05, 0.3, 2.0):
        dens = theory.density([tau], grid)[0]
        mass = dens.sum() * (grid[1] - grid[0]) + theory.atom([tau])[0]
        assert abs(mass - 1) < 5e-3, (tau, mass)
        # pointwise: rho_mu(mu) = c rho_lambda(lambda(mu)) tau/mu^2 with the solver run here
        mu = np.array([-0.5, -0.2])
        lam = -tau * (1 + mu) / mu
        rho = solve_stieltjes(lam, [0.05, 1.0], [0.5, 0.5], 0.4).density
        direct = 0.4 * rho * tau / mu**2
        got = theory.density([tau], mu)[0]
        assert np.allclose(got, direct, rtol=2e-3, atol=1e-6)
    assert np.all(theory.atom(TAU) == 0.6)
    assert not LinearTheory.from_manifold(LinearManifold(50, v[:10])).density([1.0], grid).any()


def test_predicted_phases_are_the_closed_forms():
    v = np.r_[np.full(20, 1.0), np.full(20, 0.05)]
    theory = LinearTheory.from_manifold(LinearManifold(100, v, "gaussian"))
    lam = theory.tangent_eigenvalues
    delta = 0.1
    ph = theory.phases(delta)
    assert ph["trivial_end_tau"] == pytest.approx(lam[0] * 9)
    assert ph["manifold_gap_open_tau"] == pytest.approx(lam[-1] * 9)
    assert ph["manifold_gap_index"] == 40
    (gap,) = ph["intermediate_gaps"]
    assert gap["index"] == 20
    a, b = lam[20], lam[19]
    assert gap["tau_max"] == pytest.approx(np.sqrt(a * b))
    assert gap["tau_open"] * gap["tau_close"] == pytest.approx(a * b)
    labels = theory.phase_labels([1e3, ph["trivial_end_tau"] * 1.01, ph["trivial_end_tau"] * 0.99,
                                  ph["manifold_gap_open_tau"] * 1.01, ph["manifold_gap_open_tau"] * 0.99,
                                  1e-4], delta)
    assert labels == ["trivial", "trivial", "manifold coverage", "manifold coverage",
                      "consolidation", "consolidation"]
    # at the visibility edges the gap in the predicted spectrum is exactly delta
    for edge in (gap["tau_open"], gap["tau_close"]):
        mu = theory.eigenvalues([edge])[0]
        assert mu[19] - mu[20] == pytest.approx(delta, abs=1e-12)


def test_finite_d_gaps_agree_with_random_matrix_edges_at_d4000():
    """Gap formulas with the asymptotic bulk edges against the gaps of the exact spectrum of a
    random-projection manifold, D = 4000, m = 800 (two groups of 400): within 5%."""
    d, v = 4000, np.r_[np.full(400, 1.0), np.full(400, 0.05)]
    theory = LinearTheory.from_manifold(LinearManifold(d, v, "gaussian", seed=1))
    sol = theory.covariance_density
    (lo1, hi1), (lo2, hi2) = bulks(sol.grid, sol.density)
    a, b = hi1, lo2  # upper edge of the low-variance bulk, lower edge of the high-variance one
    delta = 0.1
    tau = np.geomspace(1e-3, 1e2, 4001)
    measured = analysis.gap_widths(theory.eigenvalues(tau))[:, 399]  # the gap with 400 above it
    predicted = intermediate_gap_width(tau, a, b)
    i_meas, i_pred = np.argmax(measured), np.argmax(predicted)
    assert abs(tau[i_meas] / tau[i_pred] - 1) < 0.05
    assert abs(measured[i_meas] / predicted[i_pred] - 1) < 0.05
    off, on = gap_visibility(a, b, delta)
    seen = tau[measured > delta]
    assert abs(seen.max() / on - 1) < 0.05 and abs(seen.min() / off - 1) < 0.05
    lam = theory.tangent_eigenvalues
    assert abs(lam[-1] / lo1 - 1) < 0.05 and abs(lam[0] / hi2 - 1) < 0.05


def test_normalized_spectrum_of_each_target():
    """Singular values written out from theory.md 3.2 for each target map to the normalized
    eigenvalues -tau/(lambda + tau) (tangent) and -1 (normal)."""
    lam = np.r_[np.full(5, 1.0), np.full(5, 0.1)]
    alpha, sigma = np.array([0.9, 0.3]), np.array([0.4359, 0.9539])
    rows = {"score": [], "denoiser": [], "eps": []}
    exact = []
    for a, s in zip(alpha, sigma, strict=True):
        tau = s**2 / a**2
        exact.append(np.sort(np.r_[-tau / (lam + tau), -np.ones(20)])[::-1])
        rows["score"].append(np.r_[1 / (a**2 * lam + s**2), np.full(20, 1 / s**2)])
        rows["denoiser"].append(np.r_[lam / (lam + tau) / a, np.zeros(20)])
        rows["eps"].append(np.r_[s / (a**2 * lam + s**2), np.full(20, 1 / s)])
    for target, sv in rows.items():
        mu = analysis.normalized_spectrum(np.array(sv)[None], target, alpha, sigma)[0]
        assert rel_err(mu, np.array(exact)) < 1e-13, target
    # K < D: the kept values land at their absolute positions
    sv = np.sort(np.array(rows["score"]), axis=1)[:, ::-1][:, :22]
    mu = analysis.normalized_spectrum(sv[None], "score", alpha, sigma, dim=30)[0]
    assert np.isnan(mu[:, :8]).all() and rel_err(mu[:, 8:], np.array(exact)[:, 8:]) < 1e-13
    sv = np.sort(np.array(rows["denoiser"]), axis=1)[:, ::-1][:, :4]
    mu = analysis.normalized_spectrum(sv[None], "denoiser", alpha, sigma, dim=30)[0]
    assert np.isnan(mu[:, 4:]).all() and rel_err(mu[:, :4], np.array(exact)[:, :4]) < 1e-13


def test_dimension_and_distance():
    mu = np.array([[-0.01, -0.02, -0.9, -1, -1], [-0.9, -0.95, -0.96, -1, -1]])
    np.testing.assert_array_equal(analysis.dimension(mu, 0.1), [2, -1])
    assert analysis.spectrum_distance(mu[0], mu[0]) == 0
    assert analysis.spectrum_distance(mu[0], mu[0] - 0.1) == pytest.approx(0.1)
    with_nan = np.r_[np.nan, np.nan, mu[0][2:]]
    assert analysis.spectrum_distance(with_nan, mu[0] + np.r_[5, 5, 0, 0, 0]) == pytest.approx(0)
    assert np.isnan(analysis.spectrum_distance(np.full(5, np.nan), mu[0]))
    assert analysis.dimension(np.r_[np.nan, np.nan, -0.01, -1, -1], 0.1) == 3
    assert analysis.dimension(np.array([-0.5]), 0.1) == -1


def test_measured_trivial_phase_is_two_sided_and_manifold_gap_needs_the_normal_cluster():
    tau = np.array([1.0])
    assert analysis.measured_phases(tau, np.array([[-0.95, -1.5, -2.0]]), 0.1)["trivial_end_tau"] is None
    assert analysis.measured_phases(tau, np.array([[-0.95, -1.0, -1.05]]), 0.1)["trivial_end_tau"] == 1.0
    # a visible gap with values far from -1, or spread wider than the gap, below it is intermediate
    ph = analysis.measured_phases(tau, np.array([[-0.02, -0.05, -0.4, -0.45, -1.0, -1.0]]), 0.1)
    assert ph["manifold_gap_index"] == 4 and [g["index"] for g in ph["intermediate_gaps"]] == [2]
    ph = analysis.measured_phases(tau, np.array([[-0.1, -0.3, -0.45, -0.48]]), 0.1)
    assert ph["manifold_gap_index"] is None and [g["index"] for g in ph["intermediate_gaps"]] == [1, 2]
    ph = analysis.measured_phases(tau, np.array([[-0.02, -0.3, -0.6, -0.95, -1.0]]), 0.1)
    assert ph["manifold_gap_index"] == 3 and [g["index"] for g in ph["intermediate_gaps"]] == [1, 2]
    # a trained network's normal bulk (not the atom at -1) still marks the manifold gap ...
    ph = analysis.measured_phases(tau, np.array([[-0.01, -0.03, -0.55, -0.6, -0.7]]), 0.1)
    assert ph["manifold_gap_index"] == 2 and ph["intermediate_gaps"] == []
    # ... but not one that is too spread, or half in the atom
    for row in ([-0.01, -0.3, *np.linspace(-0.55, -0.85, 7)], [-0.01, -0.03, *np.linspace(-0.6, -1.0, 6)]):
        assert analysis.measured_phases(tau, np.array([row]), 0.1)["manifold_gap_index"] is None


def test_measured_phases_of_the_exact_spectrum_fall_within_one_grid_step():
    v = np.r_[np.full(20, 1.0), np.full(20, 0.05)]
    theory = LinearTheory.from_manifold(LinearManifold(100, v, "gaussian"))
    tau = np.geomspace(1e-4, 1e3, 50)
    step = tau[1] / tau[0]
    meas = analysis.measured_phases(tau, theory.eigenvalues(tau), 0.1)
    pred = theory.phases(0.1)
    assert pred["trivial_end_tau"] <= meas["trivial_end_tau"] < pred["trivial_end_tau"] * step
    opened = pred["manifold_gap_open_tau"]
    assert opened / step < meas["manifold_gap_open_tau"] <= opened
    assert meas["manifold_gap_index"] == 40
    (mg,), (pg,) = meas["intermediate_gaps"], pred["intermediate_gaps"]
    assert mg["index"] == pg["index"] == 20
    assert pg["tau_open"] / step < mg["tau_open"] <= pg["tau_open"]
    assert pg["tau_close"] <= mg["tau_close"] < pg["tau_close"] * step
    assert pg["tau_max"] / step < mg["tau_max"] < pg["tau_max"] * step
