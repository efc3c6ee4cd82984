"""The exact theory of Gaussian-mixture data (spectra.theory.mixture) and compare-theory /
`spectra angles` on runs of mixtures, through click on real run files.

References never go through spectra's Jacobian code: the posterior-mean Jacobian is
J_x0 = (I + sigma^2 H)/alpha with H torch's Hessian of log p_t written here from the mixture's
means and covariances (torch.distributions.MultivariateNormal + logsumexp); principal angles come
from scipy.linalg.subspace_angles; the MoLRG levels zeta = 1/(1 + tau), xi = delta^2/(delta^2 + tau)
are written from tau.
"""

import json

import h5py
import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.models import load_model, molrg
from spectra.models.analytic import GaussianMixture
from spectra.schedules import Schedule
from spectra.studies import mixtures, phases
from spectra.theory.mixture import MixtureTheory

DELTA = 0.2
D_CLASS = 5
MOLRG = f"""kind = "gmm"
preset = "molrg"
ambient_dim = 50
n_classes = 3
subspace_dim = {D_CLASS}
delta = {DELTA}
seed = 0
[schedule]
name = "ve"
"""
PHASES = ["trivial", "manifold coverage", "class commitment", "consolidation"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    return res


def ve_time(sigma):
    """The ve time (sigma_min 0.01, sigma_max 50) of noise level sigma."""
    return float(np.log(sigma / 0.01) / np.log(50 / 0.01))


# --- an independent posterior and Jacobian -------------------------------------------------------
def log_density(weights, means, bases, eigenvalues, alpha, sigma):
    """log p_t and the component log-joints as torch functions of a flat x (D,), from
    p_t = sum_k pi_k N(alpha mu_k, alpha^2 C_k + sigma^2 I), C_k = V_k diag(e_k) V_k^T."""
    bases = torch.as_tensor(np.asarray(bases, dtype=np.float64))
    covs = bases @ torch.diag_embed(torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64))) \
        @ bases.transpose(1, 2)
    eye = torch.eye(covs.shape[1], dtype=torch.float64)
    comps = torch.distributions.MultivariateNormal(
        alpha * torch.as_tensor(np.asarray(means, dtype=np.float64)),
        covariance_matrix=alpha**2 * covs + sigma**2 * eye)
    w = np.asarray(weights, dtype=np.float64)
    logw = torch.log(torch.as_tensor(w / w.sum()))

    def joint(x):
        return logw + comps.log_prob(x)

    return (lambda x: torch.logsumexp(joint(x), 0)), joint


def reference(mix, x, alpha, sigma):
    """(J_x0 (N, D, D), the score's Jacobian H (N, D, D), posterior (N, K)) at flat points x."""
    logp, joint = log_density(mix.weights, mix.means, mix.bases, mix.eigenvalues, alpha, sigma)
    xs = torch.as_tensor(np.asarray(x, dtype=np.float64))
    hess = torch.stack([torch.autograd.functional.hessian(logp, xi) for xi in xs]).numpy()
    post = torch.softmax(torch.stack([joint(xi) for xi in xs]), dim=1).numpy()
    eye = np.eye(xs.shape[1])
    return (eye + sigma**2 * hess) / alpha, hess, post


def two_component(schedule):
    """Non-zero means, unnormalized weights, ranks 3 and 2 (the second zero-padded)."""
    rng = np.random.default_rng(4)
    dim = 6
    bases = np.zeros((2, dim, 3))
    bases[0] = np.linalg.qr(rng.standard_normal((dim, 3)))[0]
    bases[1, :, :2] = np.linalg.qr(rng.standard_normal((dim, 2)))[0]
    eig = np.array([[2.0, 0.5, 0.1], [1.0, 0.3, 0.0]])
    means = np.stack([rng.standard_normal(dim), -rng.standard_normal(dim)])
    return GaussianMixture(np.array([3.0, 7.0]), means, bases, eig, schedule)


MIXTURES = {"molrg": lambda s: molrg(20, 3, 4, DELTA, s, seed=2), "two-component": two_component}


@pytest.mark.parametrize("name", sorted(MIXTURES))
@pytest.mark.parametrize("schedule,t", [("ve", 0.35), ("vp", 0.3), ("vp", 0.08)])
def test_denoiser_jacobian_equals_the_hessian_of_log_density(name, schedule, t):
    mix = MIXTURES[name](Schedule(schedule))
    alpha, sigma = float(mix.schedule.alpha(t)), float(mix.schedule.sigma(t))
    rng = np.random.default_rng(7)
    x0 = mix.sample(6, rng)
    x0 = np.concatenate([x0, (x0[:-1] + x0[1:]) / 2])  # midpoints: the posterior splits there
    x = alpha * x0 + sigma * rng.standard_normal(x0.shape)
    theory = MixtureTheory(mix.weights, mix.means, mix.bases, mix.eigenvalues)
    exact, hess, post = reference(mix, x, alpha, sigma)
    assert np.any((post.max(1) > 0.01) & (post.max(1) < 0.99)), post  # mixing points are tested
    np.testing.assert_allclose(theory.posterior(x, alpha, sigma), post, atol=1e-12)
    jac = theory.denoiser_jacobian(x, alpha, sigma)
    assert jac.shape == exact.shape == (len(x), mix.means.shape[1], mix.means.shape[1])
    for j, e in zip(jac, exact, strict=True):
        assert np.abs(j - e).max() / np.abs(e).max() < 1e-10
    # the spectra of each target: J_x0, J_score = H, J_eps = -sigma H
    pts = x[:, None, :]
    for target, ref in (("denoiser", exact), ("score", hess), ("eps", -sigma * hess)):
        values = theory.singular_values(pts, [alpha], [sigma], target)[:, 0]
        want = np.linalg.svd(ref, compute_uv=False)
        assert np.abs(values - want).max() / want.max() < 1e-10, target


# --- acceptance: the class subspaces at sigma = 0.2 (issue 19) ------------------------------
@pytest.fixture(scope="module")
def molrg_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("molrg") / "molrg.toml"
    path.write_text(MOLRG)
    return path


def test_top_subspace_is_the_own_class_subspace_at_sigma_0_2(molrg_spec, tmp_path):
    run = tmp_path / "run.h5"
    ok("estimate", "--model", molrg_spec, "--target", "denoiser", "--method", "jvp",
       "--save-vectors", D_CLASS, "--n-samples", 6, "--times", f"{ve_time(0.2):.17g}", "--out", run,
       "--quiet")
    traj = spectra.load(run)
    assert traj["sigma"][0] == pytest.approx(0.2, rel=1e-12) and traj["alpha"][0] == 1.0
    model = load_model(str(molrg_spec))
    u = [model.bases[k][:, k * D_CLASS:(k + 1) * D_CLASS] for k in range(3)]
    _, _, post = reference(model, traj["x0"], 1.0, 0.2)
    classes, angles = [], []
    for n, x in enumerate(traj["x0"]):
        k = int(np.argmax([np.linalg.norm(uk.T @ x) for uk in u]))
        assert post[n].argmax() == k and post[n].max() > 1 - 1e-7  # a point of class k, confidently
        classes.append(k)
        angles.append(scipy.linalg.subspace_angles(traj["right_vectors"][n, 0].T, u[k]).max())
    assert max(angles) < 1e-6, angles
    assert len(set(classes)) > 1

    out = tmp_path / "angles"
    res = ok("angles", run, "--out", out)
    assert "top-5" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "angles" and metrics["k"] == D_CLASS
    assert metrics["own_reference"] == classes
    assert metrics["times"][0]["largest_angle_own"] < 1e-6
    np.testing.assert_allclose([row[0] for row in metrics["largest_angle_per_anchor"]], angles,
                               rtol=0, atol=1e-9)
    assert (out / "angles.png").stat().st_size > 1000


# --- acceptance: compare-theory on the exact MoLRG ---------------------------------------------
@pytest.fixture(scope="module")
def molrg_comparison(molrg_spec, tmp_path_factory):
    folder = tmp_path_factory.mktemp("molrg-run")
    run = folder / "run.h5"
    ok("estimate", "--model", molrg_spec, "--target", "denoiser", "--method", "jvp", "--dtype", "float64",
       "--n-samples", 6, "--n-times", 16, "--out", run, "--quiet")
    ok("compare-theory", run, "--out", folder / "cmp")
    return json.loads((folder / "cmp" / "metrics.json").read_text())


def _generation_order(rows, key):
    labels = [r[key] for r in sorted(rows, key=lambda r: -r["tau"])]
    return [lab for i, lab in enumerate(labels) if i == 0 or labels[i - 1] != lab]


def test_compare_theory_predicts_the_class_gap_of_molrg(molrg_comparison):
    metrics = molrg_comparison
    assert metrics["theory"]["kind"] == "mixture" and metrics["theory"]["m"] == 3 * D_CLASS
    rows = metrics["times"]
    assert len(rows) == 16
    assert max(r["spectrum_distance"] for r in rows) < 1e-10
    for which in ("predicted", "measured"):
        assert metrics["phases"][which]["class_gap"]["index"] == D_CLASS
    confident = 0
    for row in rows:
        mix, tau = row["mixture"], row["tau"]
        assert mix["class_gap_index"] == D_CLASS
        zeta, xi = 1 / (1 + tau), DELTA**2 / (DELTA**2 + tau)
        np.testing.assert_allclose(mix["levels_confident"], [zeta, xi], rtol=1e-9)
        assert mix["class_gap_confident"] == pytest.approx(zeta - xi, rel=1e-10, abs=1e-14)
        if mix["confident_fraction"] == 1:
            confident += 1
            assert abs(mix["class_gap_measured"] - mix["class_gap_confident"]) < 1e-6
            assert np.abs(np.array(mix["levels_measured"]) - [zeta, xi]).max() < 1e-6
    assert confident >= 3
    # generation order (tau decreasing)
    assert _generation_order(rows, "measured_phase") == PHASES
    assert _generation_order(rows, "predicted_phase") == PHASES
    for row in rows:
        assert row["measured_phase"] == row["predicted_phase"]


# --- a trained network and an isotropic mixture --------------------------------------------------
def test_compare_theory_on_a_network_trained_on_molrg(molrg_spec, tmp_path):
    ck = tmp_path / "ck.pt"
    ok("train", "--data", molrg_spec, "--out", ck, "--steps", 30, "--quiet")
    run = tmp_path / "run.h5"
    ok("estimate", "--model", ck, "--target", "denoiser", "--n-samples", 2, "--n-times", 4, "--out", run,
       "--quiet")
    ok("compare-theory", run, "--out", tmp_path / "cmp")
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert metrics["theory"]["kind"] == "mixture" and metrics["theory"]["source"] == "run"
    traj = spectra.load(run)
    model = load_model(str(molrg_spec))
    for ti, row in enumerate(metrics["times"]):
        mix = row["mixture"]
        assert mix["class_gap_index"] == D_CLASS
        # the prediction at the run's clean points alpha x0, from the Hessian of log p_t
        alpha, sigma = float(traj["alpha"][ti]), float(traj["sigma"][ti])
        jac = reference(model, alpha * traj["x0"], alpha, sigma)[0]
        mu = np.sort(np.linalg.eigvalsh(alpha * jac), axis=1)[:, ::-1] - 1
        median = np.median(mu, axis=0)
        assert mix["class_gap_predicted"] == pytest.approx(median[D_CLASS - 1] - median[D_CLASS], abs=1e-9)


def test_isotropic_mixture_has_no_class_gap(tmp_path):
    spec = tmp_path / "iso.toml"
    spec.write_text('kind = "gmm"\npreset = "isotropic"\nambient_dim = 10\nn_components = 3\n'
                    'variance = 0.3\nseed = 1\n[schedule]\nname = "ve"\n')
    run = tmp_path / "run.h5"
    ok("estimate", "--model", spec, "--target", "denoiser", "--method", "jvp", "--n-samples", 3,
       "--n-times", 8, "--out", run, "--quiet")
    ok("compare-theory", run, "--out", tmp_path / "cmp")
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert metrics["theory"]["kind"] == "mixture"
    assert metrics["phases"]["predicted"]["class_gap"] is None
    assert max(r["spectrum_distance"] for r in metrics["times"]) < 1e-10
    for row in metrics["times"]:
        assert row["mixture"]["class_gap_index"] is None
        assert "class_gap_measured" not in row["mixture"]
        assert row["predicted_phase"] in PHASES + [None] and row["predicted_phase"] != "class commitment"


# --- review of issue 19: signs, nulls, means, options ----------------------------------------------
SMALL = """kind = "gmm"
preset = "molrg"
ambient_dim = 12
n_classes = 3
subspace_dim = 2
delta = 0.2
seed = 0
[schedule]
name = "ve"
"""


def test_score_and_denoiser_runs_of_a_mixture_give_one_signed_spectrum(tmp_path):
    """At noisy points sigma^2 J_score has positive eigenvalues; compare-theory reads them with
    their signs (from sym_eigenvalues), so a score run and a denoiser run of the same points give
    the same normalized spectra, measured and predicted, and the measured ones equal
    alpha eig(J_x0) - 1 of the independent Hessian."""
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL)
    times = "0.3,0.4"
    spectra_of = {}
    for target in ("score", "denoiser"):
        run = tmp_path / f"{target}.h5"
        ok("estimate", "--model", spec, "--out", run, "--target", target, "--method", "jvp", "--at", "noisy",
           "--n-samples", 4, "--times", times, "--quiet")
        ok("compare-theory", run, "--out", tmp_path / f"ct-{target}")
        with h5py.File(run) as f:
            spectra_of[target] = f["theory/anchor_eigenvalues"][()]
        metrics = json.loads((tmp_path / f"ct-{target}" / "metrics.json").read_text())
        assert max(row["spectrum_distance"] for row in metrics["times"]) < 1e-10
    np.testing.assert_allclose(spectra_of["score"], spectra_of["denoiser"], atol=1e-12)
    assert spectra_of["score"].max() > 0.01  # the case the singular values' mapping got wrong
    model = load_model(str(spec))
    traj = spectra.load(tmp_path / "score.h5")
    points = mixtures.run_points(traj)
    for ti in range(len(traj["t"])):
        alpha, sigma = float(traj["alpha"][ti]), float(traj["sigma"][ti])
        for n in range(4):
            jac = reference(model, points[n, ti][None], alpha, sigma)[0][0]
            exact = np.sort(np.linalg.eigvalsh(alpha * jac) - 1)[::-1]
            np.testing.assert_allclose(spectra_of["score"][n, ti], exact, atol=1e-10)


def test_unmeasured_values_are_null_in_valid_json(tmp_path):
    """A score run keeping K < D values has no measured class gap: null, never NaN."""
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL)
    run = tmp_path / "k.h5"
    ok("estimate", "--model", spec, "--out", run, "--k", 3, "--n-samples", 2, "--n-times", 3, "--quiet")
    with pytest.warns(UserWarning, match="no signed eigenvalues"):
        phases.compare(run, tmp_path / "ct")
    text = (tmp_path / "ct" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert all(row["mixture"]["class_gap_measured"] is None for row in metrics["times"])


MEANS = """kind = "gmm"
ambient_dim = 3
seed = 0
[schedule]
name = "ve"
[[components]]
mean = [0.0, 0.0, 10.0]
variances = [1.0]
basis = [[1.0], [0.0], [0.0]]
[[components]]
mean = [0.0, 0.0, 0.0]
variances = [1.0]
basis = [[0.0], [0.0], [1.0]]
"""


def test_own_class_is_the_nearest_affine_class_subspace(tmp_path):
    """Component 0 lives on 10 e3 + span(e1), component 1 on span(e3): a component-0 anchor holds
    most of its energy along e3, yet its class is 0, where its top vector e1 lies (angle 0)."""
    spec = tmp_path / "means.toml"
    spec.write_text(MEANS)
    run = tmp_path / "m.h5"
    ok("estimate", "--model", spec, "--out", run, "--target", "denoiser", "--method", "jvp",
       "--n-samples", 6, "--times", "0.05", "--save-vectors", 1, "--quiet")
    ok("angles", run, "--out", tmp_path / "a")
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    x0 = spectra.load(run)["x0"]
    expected = np.where(np.abs(x0[:, 2] - 10) < np.abs(x0[:, 2]) + 1e-9, 0, 1)
    assert sorted(set(expected)) == [0, 1]
    assert metrics["own_reference"] == expected.tolist()
    assert max(row[0] for row in metrics["largest_angle_per_anchor"]) < 1e-6


def test_angles_refuse_pca_options_for_other_references(molrg_spec, tmp_path):
    run = tmp_path / "r.h5"
    ok("estimate", "--model", molrg_spec, "--out", run, "--target", "denoiser", "--method", "jvp",
       "--n-samples", 1, "--times", "0.3", "--save-vectors", 5, "--quiet")
    res = invoke("angles", run, "--out", tmp_path / "a", "--rank", 3)
    assert res.exit_code == 2 and "--reference pca only" in res.output
    assert not (tmp_path / "a").exists()
