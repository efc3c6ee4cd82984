"""The representation study (`spectra represent`; docs/theory.md 3.6, 3.8; Li et al., NeurIPS 2025).

References are theory.md 3.8's limits of Theorem 1 and its quoted SNR curve of the MoLRG optimal
denoiser, and an independent numpy computation of that denoiser from its closed form
sum_l w_l (zeta U_l U_l^T + xi Ut_l Ut_l^T) x with w = softmax_l((zeta - xi)/(2 sigma^2) ||U_l^T x||^2).
"""

import json

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import SpectraGroup
from spectra_cli.represent import represent_cmd
from threadpoolctl import threadpool_limits

from spectra.models import load_model
from spectra.studies.representation import LabeledData, measure_levels, split
from spectra.theory.representation import class_snr, curve_shape, feature_snr, theorem1_snr
from spectra.train import TrainOptions, train

SIGMAS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 4.0]
#: theory.md 3.8: the exact-subspace SNR of the optimal denoiser at SIGMAS (30000 samples)
QUOTED = [12.4, 13.1, 15.3, 23.1, 30.5, 18.9, 5.3, 1.9, 0.78, 0.54]
D, K, d, DELTA = 50, 3, 5, 0.2
# sigma_min below 0.01: ve's t = 0 (sigma = sigma_min) lies outside its range (0, 1]
MOLRG = f"""kind = "gmm"
preset = "molrg"
ambient_dim = {D}
n_classes = {K}
subspace_dim = {d}
delta = {DELTA}
seed = 0
[schedule]
name = "ve"
sigma_min = 0.001
"""
# three clusters with means of norm 10 and small isotropic covariance ([L] App. C)
SEPARATED = """kind = "gmm"
preset = "isotropic"
ambient_dim = 20
n_components = 3
variance = 0.1
radius = 10.0
seed = 0
[schedule]
name = "ve"
sigma_min = 0.001
sigma_max = 1000
"""


def run(*args):
    group = SpectraGroup(commands={"represent": represent_cmd})
    return CliRunner().invoke(group, ["represent", *[str(a) for a in args]])


def assert_user_error(res, words=""):
    """Exit status 2 and exactly one line on stderr, `error: ...`, no traceback."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert words in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("represent")
    (root / "molrg.toml").write_text(MOLRG)
    (root / "separated.toml").write_text(SEPARATED)
    return root


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """One torch thread (conftest) and one BLAS thread: the probe's and SVDs' BLAS calls ran ten
    times slower on a shared 2-core CPU with more."""
    with threadpool_limits(1):
        yield


# --- 1. the theory and the exact SNR ---------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3, 10])
def test_theorem1_limits(classes):
    for w_plus in (1.0, 0.7, 1 / classes):  # at sigma -> 0 the weights do not matter
        np.testing.assert_allclose(theorem1_snr(1e-7, DELTA, classes, w_plus),
                                   1 / ((classes - 1) * DELTA**2), rtol=1e-9)
    # at sigma -> infinity the posterior is uniform, w+ = 1/K
    np.testing.assert_allclose(theorem1_snr(1e7, DELTA, classes, 1 / classes), 1 / (classes - 1), rtol=1e-9)


def test_curve_shapes():
    x = np.geomspace(0.01, 4, 6)
    assert curve_shape(x, [1, 2, 5, 3, 2, 1]) == {"shape": "unimodal", "direction": None,
                                                  "argmax": x[2], "max": 5.0}
    assert curve_shape(x, [1, 2, 3, 4, 5, 6])["direction"] == "increasing"
    assert curve_shape(x, [6, 5, 5.9, 4, 3, 1])["direction"] == "decreasing"
    assert curve_shape(x, [1, 1, 1.01, 1, 1, 1])["shape"] == "flat"
    assert curve_shape(x, [1, 2, 3, 4, 5, 4.9])["shape"] == "monotone"  # a fall below the margin


def independent_snr(x0, labels, eps, sigma, bases):
    """Li et al.'s SNR of the MoLRG optimal denoiser, from theory.md 3.8's closed form (VE)."""
    x = x0 + sigma * eps
    zeta, xi = 1 / (1 + sigma**2), DELTA**2 / (DELTA**2 + sigma**2)
    all_classes = np.concatenate(bases, axis=1)
    energy = np.stack([((x @ u) ** 2).sum(1) for u in bases], 1)
    logits = (zeta - xi) / (2 * sigma**2) * energy
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    xhat = np.zeros_like(x)
    for j, u in enumerate(bases):
        own = (x @ u) @ u.T
        xhat += w[:, [j]] * (zeta * own + xi * ((x @ all_classes) @ all_classes.T - own))
    ratios = []
    for k, u in enumerate(bases):
        f = xhat[labels == k]
        signal = ((f @ u) ** 2).sum()
        ratios.append(signal / ((f**2).sum() - signal))
    return np.mean(ratios)


def test_exact_snr_is_the_closed_form_optimal_denoiser(files):
    model = load_model(str(files / "molrg.toml"))
    rng = np.random.default_rng(5)
    x0, labels = model.sample_labeled(3000, rng)
    eps = rng.standard_normal(x0.shape)
    bases = [model.bases[k][:, k * d : (k + 1) * d] for k in range(K)]
    sigma = np.array([0.05, 0.3, 1.0])
    t = model.schedule.times_of_tau(sigma**2, 0.0, 1.0)
    train_rows, test_rows = split(labels, 0.3, rng)
    rows = measure_levels(model, LabeledData(x0, labels, "test", model), sigma, t, eps, train_rows, test_rows)
    for row, s in zip(rows, sigma, strict=True):
        assert row["snr_exact"] == pytest.approx(independent_snr(x0, labels, eps, s, bases), rel=1e-9)
        w = row["posterior_weight"]
        assert row["snr_theorem1"] == pytest.approx(float(theorem1_snr(s, DELTA, K, w)), rel=1e-12)
    # clean data: E ||U_k^T x0||^2 = d against E ||x0 - U_k U_k^T x0||^2 = delta^2 (K - 1) d
    assert class_snr(x0, labels, dict(enumerate(bases))) == pytest.approx(1 / ((K - 1) * DELTA**2), rel=0.05)


def test_feature_snr_is_high_for_class_subspaces():
    """Features of each class in its own orthogonal 2-plane: the recipe's rank-2 bases hold them."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((12, 6)))[0]
    labels = np.repeat(np.arange(3), 100)
    f = np.concatenate([rng.standard_normal((100, 2)) @ q[:, 2 * k : 2 * k + 2].T for k in range(3)])
    noisy = f + 1e-3 * rng.standard_normal(f.shape)
    assert feature_snr(noisy, labels, 2) > 1e3
    assert feature_snr(rng.standard_normal(f.shape), labels, 2) < 1  # no structure: 2 of 12 dims


# --- 2. the command on MoLRG and on separated clusters ----------------------------------------
def test_molrg_curve_is_unimodal_and_matches_the_quoted_values(files, tmp_path):
    out = tmp_path / "molrg"
    res = run("--model", files / "molrg.toml", "--out", out, "--n-samples", 20000,
              "--sigmas", ",".join(map(str, SIGMAS)))
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["format"] == "spectra-metrics" and m["kind"] == "representation"
    assert m["classes"] == [0, 1, 2] and m["n_train"] + m["n_test"] == 20000
    assert m["options"] == {"rank": 5, "ensemble": 0, "test_fraction": 0.3, "seed": 0, "n_samples": 20000}
    levels = m["levels"]
    assert [row["sigma"] for row in levels] == SIGMAS
    assert [row["tau"] for row in levels] == pytest.approx(np.square(SIGMAS), rel=1e-12)
    sched = load_model(str(files / "molrg.toml")).schedule
    assert sched.tau([row["t"] for row in levels]) == pytest.approx(np.square(SIGMAS), rel=1e-9)
    exact = np.array([row["snr_exact"] for row in levels])
    np.testing.assert_allclose(exact, QUOTED, rtol=0.05)  # Monte-Carlo error of 20000 samples
    assert exact[SIGMAS.index(0.3)] == pytest.approx(30.5, rel=0.02)
    curve = m["curves"]["snr_exact"]
    assert curve["shape"] == "unimodal" and 0.2 <= curve["argmax_sigma"] <= 0.5
    assert m["curves"]["snr"]["shape"] == "unimodal"  # the network recipe sees it too
    w = np.array([row["posterior_weight"] for row in levels])
    assert np.all(np.diff(w) < 0) and w[0] > 0.99 and w[-1] == pytest.approx(1 / K, abs=0.01)
    for name in ("snr", "probe"):
        image = matplotlib.image.imread(out / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert m["figures"] == ["snr.png", "probe.png"]
    assert "snr_exact: unimodal" in res.output


def test_separated_clusters_give_monotone_curves_and_a_probe_that_fails_at_high_noise(files, tmp_path):
    out = tmp_path / "separated"
    res = run("--model", files / "separated.toml", "--out", out, "--n-samples", 600,
              "--sigmas", "0.01,0.1,1,3,10,30,100")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["curves"]["snr"]["shape"] == "monotone"
    assert "snr_exact" not in m["levels"][0]  # no class subspaces outside MoLRG
    accuracy = [row["probe_accuracy"] for row in m["levels"]]
    assert accuracy[0] == 1.0 and accuracy[1] == 1.0
    assert accuracy[-1] < 0.5  # chance is 1/3; 180 test samples
    assert m["curves"]["probe_accuracy"]["direction"] == "decreasing"


def test_a_full_window_ensemble_is_the_same_feature_at_every_level(files):
    model = load_model(str(files / "separated.toml"))
    rng = np.random.default_rng(1)
    x0, labels = model.sample_labeled(300, rng)
    sigma = np.array([0.5, 2.0, 8.0])
    t = model.schedule.times_of_tau(sigma**2, 0.0, 1.0)
    train_rows, test_rows = split(labels, 0.3, rng)
    labeled = LabeledData(x0, labels, "test", model)
    eps = rng.standard_normal(x0.shape)
    rows = measure_levels(model, labeled, sigma, t, eps, train_rows, test_rows, ensemble=2)
    assert rows[0]["snr"] == rows[1]["snr"] == rows[2]["snr"]
    alone = measure_levels(model, labeled, sigma, t, eps, train_rows, test_rows)
    assert alone[0]["snr"] != alone[2]["snr"]


# --- 4. bad input --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arrays(files):
    x = np.random.default_rng(0).standard_normal((40, D))
    np.savez(files / "nolabels.npz", x=x)
    np.savez(files / "oneclass.npz", x=x, labels=np.zeros(40, dtype=np.int64))
    np.savez(files / "floatlabels.npz", x=x, labels=np.zeros(40))
    np.savez(files / "good.npz", x=x, labels=np.arange(40) % 2)
    return files


_FEW = ["--n-samples", 60, "--sigmas", "0.5,1"]


@pytest.mark.parametrize("args, words", [
    (["--data", "nolabels.npz", "--sigmas", "0.5,1"], "holds no array 'labels'"),
    (["--data", "oneclass.npz", "--sigmas", "0.5,1"], "single class"),
    (["--data", "floatlabels.npz", "--sigmas", "0.5,1"], "labels must be 40 integers"),
    (["--data", "missing.npz", "--sigmas", "0.5,1"], "not found"),
    (["--data", "good.npz", *_FEW], "--n-samples applies"),
    (["--sigmas", "0.5,100"], "outside the range (0.001, 50] of schedule 've'"),
    (["--sigmas", "0.001,1"], "outside the range (0.001, 50]"),  # ve's t = 0 is not in (0, 1]
    (["--sigmas", "0.5,1", "--n-sigmas", 4], "not both"),
    (["--sigma-min", 2, "--sigma-max", 1], "--sigma-min"),
    (["--feature", "blocks.0", *_FEW], "not a network"),
    (["--test-fraction", 1.5, *_FEW], "--test-fraction"),
    (["--rank", 50, "--n-samples", 400, "--sigmas", "0.5,1"], "feature dimension"),
    (["--rank", 15, *_FEW], "at most --rank 15"),  # 14 training samples of a class: an infinite SNR
])
def test_bad_input_is_one_line(arrays, tmp_path, args, words):
    args = [arrays / a if str(a).endswith(".npz") else a for a in args]
    assert_user_error(run("--model", arrays / "molrg.toml", "--out", tmp_path / "o", *args), words)


def test_another_studys_metrics_are_not_replaced(files, tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"format": "spectra-metrics", "kind": "memorization"}))
    assert_user_error(run("--model", files / "molrg.toml", "--out", tmp_path, *_FEW), "refusing to replace")


# --- 5. a network's features ---------------------------------------------------------------------
def test_feature_of_a_trained_network(files, tmp_path):
    ck = train(tmp_path / "ck.pt", TrainOptions(data=str(files / "molrg.toml"), steps=30, width=16,
                                                 batch_size=64), progress=False)
    out = tmp_path / "net"
    res = run("--model", ck, "--out", out, "--feature", "blocks.0.1", "--n-samples", 300,
              "--sigmas", "0.1,0.5,2", "--ensemble", 1)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["feature"] == "blocks.0.1" and m["data"] == "the data the model was trained on"
    for row in m["levels"]:
        assert row["snr"] > 0 and 0 <= row["probe_accuracy"] <= 1
        assert row["snr_exact"] > 0  # the network's denoiser against the true subspaces
    res = run("--model", ck, "--out", out, "--feature", "nope", "--n-samples", 60, "--sigmas", "0.1,1")
    assert_user_error(res, "not a submodule")
