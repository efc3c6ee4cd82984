"""Jacobians of internal features (`spectra estimate --feature NAME`) and saved singular vectors
(`--save-vectors V`), through the library and through click, on real HDF5 run files.

References never go through spectra's Jacobian code: the feature maps are rewritten here from the
network's layers (or imported from the factory file) and differentiated by
torch.autograd.functional.jacobian; the exact MoLRG denoiser's Jacobian is (I + sigma^2 H)/alpha
with H torch's Hessian of a log-density written here from the mixture's means and covariances.
"""

import importlib.util
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
import xarray
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli

import spectra
from spectra.jacobian import jacobian_at
from spectra.models import load_model

TIMES = (0.3, 0.6)
MOLRG = """kind = "gmm"
preset = "molrg"
ambient_dim = 50
n_classes = 3
subspace_dim = 5
delta = 0.2
seed = 0
[schedule]
name = "ve"
"""
CONV_FACTORY = '''
import torch


class ConvNet(torch.nn.Module):
    """eps-prediction on (1, 4, 4) images; `body` is a (3, 4, 4) nonlinear feature."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh())
        self.head = torch.nn.Conv2d(3, 1, 3, padding=1)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)

    def forward(self, x, t):
        return self.head(self.body(x)) * (1 + t[:, None, None, None])


def make():
    return ConvNet()
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(res, *fragments):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert res.stderr.strip() == lines[0] and not res.stdout.strip(), (res.stdout, res.stderr)
    for fragment in fragments:
        assert fragment in lines[0], res.output


def estimate(out, *args):
    res = invoke("estimate", "--out", out, "--quiet", *args)
    assert res.exit_code == 0, res.output
    return spectra.load(out)


# --- independent references ----------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    """The shipped demo network (residual MLP on D = 100, eps, ve) in float64."""
    return load_model(None).to("cpu", torch.float64)


def demo_feature(model, x, t, name):
    """The activation of `inp` or `blocks.0.1` of the demo at one flat point x (D,), written out
    from trained.py's formulas: y = c_in x, c_in = (alpha^2 v + sigma^2)^-1/2, c_noise =
    log(sigma/alpha)/4, h = inp(y), blocks.0.1 = second(silu(first(silu(h + emb))))."""
    net = model.module
    alpha = torch.tensor(float(model.schedule.alpha(t)), dtype=torch.float64)
    sigma = torch.tensor(float(model.schedule.sigma(t)), dtype=torch.float64)
    scale = 1 / torch.sqrt(alpha**2 * model.train_config["data_variance"] + sigma**2)
    angles = torch.log(sigma / alpha) / 4 * net.freqs
    emb = net.embed(torch.cat([angles.sin(), angles.cos()])[None])[0]
    h = net.inp(x * scale)
    if name == "inp":
        return h
    first, second = net.blocks[0]
    return second(torch.nn.functional.silu(first(torch.nn.functional.silu(h + emb))))


def demo_jacobian(model, x, t, name):
    """(F, D) autograd Jacobian of demo_feature at x (numpy or torch (D,))."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return torch.autograd.functional.jacobian(lambda y: demo_feature(model, y, t, name), x).numpy()


def molrg_denoiser_jacobian(model, x, t):
    """J_x0 = (I + sigma^2 H)/alpha at a flat point x (D,), H the Hessian of
    log p_t(x) = logsumexp_k(log pi_k + log N(x; alpha mu_k, alpha^2 C_k + sigma^2 I))."""
    alpha, sigma = float(model.schedule.alpha(t)), float(model.schedule.sigma(t))
    bases = torch.as_tensor(model.bases)
    covs = bases @ torch.diag_embed(torch.as_tensor(model.eigenvalues)) @ bases.transpose(1, 2)
    eye = torch.eye(covs.shape[1], dtype=torch.float64)  # sigma^2 * a float32 eye would round sigma^2
    comps = torch.distributions.MultivariateNormal(alpha * torch.as_tensor(model.means),
                                                   covariance_matrix=alpha**2 * covs + sigma**2 * eye)
    logw = torch.log(torch.as_tensor(model.weights) / float(np.sum(model.weights)))
    hess = torch.autograd.functional.hessian(lambda y: torch.logsumexp(logw + comps.log_prob(y), 0),
                                             torch.as_tensor(np.asarray(x), dtype=torch.float64))
    return ((eye + sigma**2 * hess) / alpha).numpy()


def assert_singular_pairs(jac, values, right, left, tol):
    """J v_i = s_i u_i and J^T u_i = s_i v_i (relative to s_1), both sets orthonormal, and each
    right vector's largest-magnitude entry positive."""
    scale = np.linalg.svd(jac, compute_uv=False)[0]
    v, u = right.T, left.T  # (D, V), (F, V)
    assert np.abs(jac @ v - u * values).max() / scale < tol
    assert np.abs(jac.T @ u - v * values).max() / scale < tol
    np.testing.assert_allclose(right @ right.T, np.eye(len(right)), atol=max(tol, 1e-12))
    np.testing.assert_allclose(left @ left.T, np.eye(len(left)), atol=max(tol, 1e-12))
    pivots = right[np.arange(len(right)), np.abs(right).argmax(axis=1)]
    assert np.all(pivots > 0)


# --- the Jacobian of a feature ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["inp", "blocks.0.1"])
def test_library_feature_jacobians_equal_autograd(demo, name):
    points = torch.as_tensor(np.random.default_rng(0).standard_normal((3, 100)))
    t = 0.4
    exact = np.stack([demo_jacobian(demo, x, t, name) for x in points])
    assert exact.shape == (3, 128, 100)
    for method in ("jvp", "vjp"):
        jac = jacobian_at(demo, points, t, f"feature:{name}", method).numpy()
        assert jac.shape == (3, 128, 100)
        assert np.abs(jac - exact).max() / np.abs(exact).max() < 1e-10, method
    fd = jacobian_at(demo, points, t, f"feature:{name}", "fd-central").numpy()
    assert np.abs(fd - exact).max() / np.abs(exact).max() < 1e-6
    if name == "inp":  # a linear layer of c_in x: J = c_in W, at every point
        alpha, sigma = float(demo.schedule.alpha(t)), float(demo.schedule.sigma(t))
        c_in = 1 / np.sqrt(alpha**2 * demo.train_config["data_variance"] + sigma**2)
        weight = demo.module.inp.weight.detach().numpy()
        np.testing.assert_allclose(exact, np.broadcast_to(c_in * weight, exact.shape), rtol=1e-13)


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    """The demo's blocks.0.1 (F = 128, D = 100), 2 anchors, 2 times, top 4 vector pairs."""
    out = tmp_path_factory.mktemp("feature") / "run.h5"
    estimate(out, "--feature", "blocks.0.1", "--n-samples", 2, "--times", ",".join(map(str, TIMES)),
             "--save-vectors", 4)
    return out


def test_feature_run_holds_singular_values_of_the_rectangular_jacobian(demo, feature_run):
    traj = spectra.load(feature_run)
    assert traj.attrs["target"] == "feature:blocks.0.1"
    assert traj["singular_values"].shape == (2, 2, 100)  # min(F, D)
    assert np.all(np.isnan(traj["sym_eigenvalues"])) and np.all(np.isnan(traj["asymmetry"]))
    assert traj["done"].all()
    np.testing.assert_array_equal(traj["alpha"], 1.0)  # ve, --at clean: the points are x0
    for n, x in enumerate(traj["x0"]):
        for ti, t in enumerate(TIMES):
            exact = np.linalg.svd(demo_jacobian(demo, x, t, "blocks.0.1"), compute_uv=False)
            assert rel_err(traj["singular_values"][n, ti], exact) < 1e-10


def test_feature_run_by_central_differences(demo, tmp_path):
    traj = estimate(tmp_path / "fd.h5", "--feature", "blocks.0.1", "--method", "fd-central",
                    "--n-samples", 1, "--times", "0.45")
    assert traj.attrs["method_used"] == "fd-central"
    exact = np.linalg.svd(demo_jacobian(demo, traj["x0"][0], 0.45, "blocks.0.1"), compute_uv=False)
    assert np.abs(traj["singular_values"][0, 0] - exact).max() / exact[0] < 1e-6


def test_shaped_feature_of_a_conv_factory(tmp_path):
    """A (3, 4, 4) feature of a (1, 4, 4) model: a 48 x 16 Jacobian, its vectors (V, 48)."""
    code = tmp_path / "convnet.py"
    code.write_text(CONV_FACTORY)
    traj = estimate(tmp_path / "conv.h5", "--model", f"{code}:make", "--schedule", "ve",
                    "--parameterization", "eps", "--shape", "1,4,4", "--data", "noise",
                    "--n-samples", 2, "--times", "0.5", "--feature", "body", "--save-vectors", 3)
    spec = importlib.util.spec_from_file_location("convnet_reference", code)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    body = mod.make().double().body
    assert traj["x0"].shape == (2, 1, 4, 4)
    assert traj["singular_values"].shape == (2, 1, 16)
    assert traj["right_vectors"].shape == (2, 1, 3, 16)
    assert traj["left_vectors"].shape == (2, 1, 3, 48)
    for n, x in enumerate(traj["x0"]):
        jac = torch.autograd.functional.jacobian(
            lambda y: body(y.reshape(1, 1, 4, 4)).reshape(-1), torch.as_tensor(x.ravel())).numpy()
        assert jac.shape == (48, 16)
        values = np.linalg.svd(jac, compute_uv=False)
        assert rel_err(traj["singular_values"][n, 0], values) < 1e-10
        assert_singular_pairs(jac, traj["singular_values"][n, 0, :3], traj["right_vectors"][n, 0],
                              traj["left_vectors"][n, 0], 1e-10)


# --- saved singular vectors ------------------------------------------------------------------
def test_saved_vectors_of_a_feature(demo, feature_run):
    traj = spectra.load(feature_run)
    assert traj["right_vectors"].shape == (2, 2, 4, 100)
    assert traj["left_vectors"].shape == (2, 2, 4, 128)
    for n, x in enumerate(traj["x0"]):
        for ti, t in enumerate(TIMES):
            jac = demo_jacobian(demo, x, t, "blocks.0.1")
            values = traj["singular_values"][n, ti, :4]
            assert rel_err(values, np.linalg.svd(jac, compute_uv=False)[:4]) < 1e-10
            assert_singular_pairs(jac, values, traj["right_vectors"][n, ti], traj["left_vectors"][n, ti],
                                  1e-10)


@pytest.fixture(scope="module")
def molrg_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("molrg") / "molrg.toml"
    path.write_text(MOLRG)
    return path


@pytest.mark.parametrize("method,tol", [("jvp", 1e-10), ("topk", 1e-6)])
def test_saved_vectors_of_the_exact_molrg_denoiser(molrg_spec, tmp_path, method, tol):
    extra = ("--k", 8, "--save-vectors", 4) if method == "topk" else ("--save-vectors", 6)
    traj = estimate(tmp_path / "run.h5", "--model", molrg_spec, "--target", "denoiser", "--method", method,
                    "--n-samples", 3, "--times", "0.3,0.5", *extra)
    model = load_model(str(molrg_spec))
    kept = extra[-1]
    assert traj["right_vectors"].shape == traj["left_vectors"].shape == (3, 2, kept, 50)
    for n, x in enumerate(traj["x0"]):
        for ti, t in enumerate((0.3, 0.5)):
            jac = molrg_denoiser_jacobian(model, x, t)
            values = traj["singular_values"][n, ti, :kept]
            exact = np.linalg.svd(jac, compute_uv=False)
            if method == "jvp":
                assert np.abs(values - exact[:kept]).max() / values[0] < tol
            else:  # each a singular value of J (that they are the top ones: the xfail below)
                assert np.abs(values[:, None] - exact[None]).min(axis=1).max() / values[0] < tol
            assert_singular_pairs(jac, values, traj["right_vectors"][n, ti], traj["left_vectors"][n, ti], tol)


@pytest.mark.xfail(strict=True, reason="known limitation: top-k with block size 1 (the CPU's measured "
                   "choice for k < 20) misses copies of a repeated singular value (MoLRG's own-class "
                   "level has multiplicity d = 5) and still reports every certificate converged; "
                   "--block-size >= the multiplicity finds them (the test below)")
def test_topk_finds_every_copy_of_a_repeated_singular_value(molrg_spec, tmp_path):
    traj = estimate(tmp_path / "run.h5", "--model", molrg_spec, "--target", "denoiser", "--method", "topk",
                    "--k", 8, "--n-samples", 3, "--times", "0.3")
    model = load_model(str(molrg_spec))
    assert traj.attrs["complete"] and np.all(traj["residuals"] < 1e-6 * traj["singular_values"])
    for n, x in enumerate(traj["x0"]):
        exact = np.linalg.svd(molrg_denoiser_jacobian(model, x, 0.3), compute_uv=False)[:8]
        assert np.abs(traj["singular_values"][n, 0] - exact).max() / exact[0] < 1e-6, n


@pytest.mark.parametrize("block", [5, 8])
def test_topk_with_a_block_as_large_as_the_multiplicity_finds_every_copy(molrg_spec, tmp_path, block):
    """--block-size at least the own-class level's multiplicity d = 5: the top 8 values and the
    top-5 subspace equal the dense ones (the case the measured block of 1 gets wrong, above)."""
    traj = estimate(tmp_path / "run.h5", "--model", molrg_spec, "--target", "denoiser", "--method", "topk",
                    "--k", 8, "--block-size", block, "--save-vectors", 5, "--n-samples", 3, "--times", "0.3")
    assert int(traj.attrs["block_size"]) == block and traj.options["block_size"] == block
    model = load_model(str(molrg_spec))
    for n, x in enumerate(traj["x0"]):
        jac = molrg_denoiser_jacobian(model, x, 0.3)
        exact = np.linalg.svd(jac, compute_uv=False)[:8]
        assert np.abs(traj["singular_values"][n, 0] - exact).max() / exact[0] < 1e-6, n
        assert_singular_pairs(jac, traj["singular_values"][n, 0, :5], traj["right_vectors"][n, 0],
                              traj["left_vectors"][n, 0], 1e-6)


def test_run_with_vectors_opens_in_xarray(feature_run):
    ds = spectra.load(feature_run).to_xarray()
    with h5py.File(feature_run) as f:
        right, left = f["right_vectors"][()], f["left_vectors"][()]
    with xarray.open_dataset(feature_run, engine="h5netcdf") as raw:
        for data in (ds, raw):
            assert data["right_vectors"].dims == ("anchor", "time", "vector", "input")
            assert data["left_vectors"].dims == ("anchor", "time", "vector", "output")
            assert dict(data.sizes)["vector"] == 4
            assert dict(data.sizes)["input"] == 100 and dict(data.sizes)["output"] == 128
            np.testing.assert_array_equal(data["right_vectors"].values, right)
            np.testing.assert_array_equal(data["left_vectors"].values, left)
        np.testing.assert_allclose(raw["right_vectors"]["tau"].values, raw["tau"].values)


# --- refusals --------------------------------------------------------------------------------
REFUSALS = {
    "topk": (["--feature", "blocks.0.1", "--method", "topk"], ["--feature", "topk"]),
    "haar": (["--feature", "blocks.0.1", "--directions", "haar"], ["haar"]),
    "target": (["--feature", "blocks.0.1", "--target", "score"], ["--feature", "--target"]),
    "compile": (["--feature", "blocks.0.1", "--compile"], ["--compile", "--feature"]),
    "unknown": (["--feature", "blocks.9"], ["blocks.9", "inp", "blocks.0.1"]),
    "analytic": (["--model", "MOLRG", "--feature", "inp"], ["not a network"]),
    "topk vectors": (["--model", "MOLRG", "--method", "topk", "--k", 4, "--save-vectors", 5],
                     ["--save-vectors 5", "--k 4"]),
    "block dense": (["--model", "MOLRG", "--method", "jvp", "--block-size", 2], ["--block-size", "topk"]),
    "block above k": (["--model", "MOLRG", "--method", "topk", "--k", 4, "--block-size", 5],
                      ["--block-size", "--k (4)"]),
    "dense vectors": (["--model", "MOLRG", "--method", "jvp", "--k", 3, "--save-vectors", 5],
                      ["--save-vectors 5", "--k 3"]),
    "feature vectors": (["--feature", "inp", "--save-vectors", 101], ["--save-vectors 101", "100"]),
    "square vectors": (["--model", "MOLRG", "--save-vectors", 51], ["--save-vectors 51", "50"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(molrg_spec, tmp_path, case):
    args, fragments = REFUSALS[case]
    args = [molrg_spec if a == "MOLRG" else a for a in args]
    out = tmp_path / "run.h5"
    res = invoke("estimate", "--out", out, "--n-samples", 1, "--times", "0.5", "--quiet", *args)
    assert_one_line_error(res, *fragments)
    assert not out.exists() and list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_plot_and_compare_theory_refuse_feature_runs(feature_run, tmp_path):
    before = feature_run.read_bytes()
    assert_one_line_error(invoke("plot", feature_run, "--out", tmp_path / "plots"), "feature:blocks.0.1")
    assert_one_line_error(invoke("compare-theory", feature_run, "--out", tmp_path / "cmp"),
                          "feature:blocks.0.1")
    assert feature_run.read_bytes() == before
    assert not (tmp_path / "plots").exists() and not (tmp_path / "cmp").exists()


# --- resume ----------------------------------------------------------------------------------
def test_resume_with_vectors(feature_run, tmp_path):
    """A run interrupted after its first time (done false, values and vectors unwritten) resumes
    to the values and vectors of the uninterrupted run; another --save-vectors is refused."""
    args = ["--feature", "blocks.0.1", "--n-samples", 2, "--times", ",".join(map(str, TIMES)),
            "--quiet"]
    part = tmp_path / "part.h5"
    shutil.copy(feature_run, part)
    with h5py.File(part, "r+") as f:
        f.attrs["complete"] = False
        f["done"][:, 1] = False
        for name in ("singular_values", "right_vectors", "left_vectors"):
            f[name][:, 1] = np.nan
    res = invoke("estimate", "--out", part, "--save-vectors", 5, "--resume", *args)
    assert_one_line_error(res, "save_vectors", "4", "5")
    res = invoke("estimate", "--out", part, "--resume", *args)  # no --save-vectors: 0
    assert_one_line_error(res, "save_vectors")
    with h5py.File(part) as f:
        assert not f["done"][:, 1].any()
    res = invoke("estimate", "--out", part, "--save-vectors", 4, "--resume", *args)
    assert res.exit_code == 0, res.output
    with h5py.File(part) as f, h5py.File(feature_run) as g:
        assert f.attrs["complete"] and f["done"][()].all()
        for name in ("singular_values", "right_vectors", "left_vectors"):
            np.testing.assert_allclose(f[name][()], g[name][()], rtol=0, atol=1e-12)
    # resuming a complete run changes nothing
    with h5py.File(part) as f:
        before = {name: f[name][()] for name in ("right_vectors", "left_vectors")}
    res = invoke("estimate", "--out", part, "--save-vectors", 4, "--resume", *args)
    assert res.exit_code == 0, res.output
    with h5py.File(part) as f:
        for name, value in before.items():
            np.testing.assert_array_equal(f[name][()], value)
    assert json.loads(spectra.load(part).attrs["options"])["save_vectors"] == 4


@pytest.mark.parametrize("damage", ["left missing", "other V"])
def test_damaged_vectors_are_refused(feature_run, tmp_path, damage):
    """Vectors that do not pair up (one dataset without the other, or another V) make a damaged
    file: one line, exit 2."""
    bad = tmp_path / "bad.h5"
    shutil.copy(feature_run, bad)
    with h5py.File(bad, "r+") as f:
        left = f["left_vectors"][()]
        del f["left_vectors"]
        if damage == "other V":
            f.create_dataset("left_vectors", data=left[:, :, :2])
    assert_one_line_error(invoke("angles", bad, "--out", tmp_path / "a", "--reference", "pca"), "damaged")


# --- hostile features (review of issue 19) -----------------------------------------------------
HOSTILE_FACTORY = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.inp = torch.nn.Linear(4, 6)
        self.act = torch.nn.ReLU(inplace=True)
        self.twice = torch.nn.Tanh()
        self.arg = Argmax()
        self.out = torch.nn.Linear(6, 4)

    def forward(self, x, t):
        h = self.act(self.inp(x))  # overwrites inp's output in place
        h = self.twice(self.twice(h))
        self.arg(h)
        return self.out(h)


class Argmax(torch.nn.Module):
    def forward(self, h):
        return h.argmax(dim=1, keepdim=True)


def make():
    return Net()
'''


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    code = tmp_path_factory.mktemp("hostile") / "hostile.py"
    code.write_text(HOSTILE_FACTORY)
    return code


def hostile_args(code, out, *args):
    return ("estimate", "--model", f"{code}:make", "--schedule", "ve", "--parameterization", "eps",
            "--data", "noise", "--shape", "4", "--n-samples", 1, "--times", "0.5", "--out", out,
            "--quiet", *args)


@pytest.mark.parametrize("method", ["jvp", "vjp", "fd-central"])
def test_a_feature_overwritten_in_place_later_is_still_its_own(hostile, tmp_path, method):
    """inp's output is overwritten by ReLU(inplace=True): the hook's copy keeps dh/dx = W, whose
    singular values are those of inp.weight (not of relu(inp))."""
    res = invoke(*hostile_args(hostile, tmp_path / "r.h5", "--feature", "inp", "--method", method))
    assert res.exit_code == 0, res.output
    spec = importlib.util.spec_from_file_location("hostile_reference", hostile)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exact = np.linalg.svd(mod.make().inp.weight.detach().double().numpy(), compute_uv=False)
    values = spectra.load(tmp_path / "r.h5")["singular_values"][0, 0]
    assert rel_err(values, exact) < (1e-6 if method == "fd-central" else 1e-10)


@pytest.mark.parametrize("name, words", [("twice", "ran 2 times"), ("arg", "dtype int64")])
def test_features_that_cannot_be_differentiated_as_named_are_refused(hostile, tmp_path, name, words):
    res = invoke(*hostile_args(hostile, tmp_path / "r.h5", "--feature", name))
    assert_one_line_error(res, f"--feature '{name}'", words)
    assert not (tmp_path / "r.h5").exists()


def test_a_square_feature_has_no_symmetric_part(hostile, tmp_path):
    """out: F = D = 4, but input and feature spaces differ: sym_eigenvalues and asymmetry NaN."""
    res = invoke(*hostile_args(hostile, tmp_path / "r.h5", "--feature", "out"))
    assert res.exit_code == 0, res.output
    traj = spectra.load(tmp_path / "r.h5")
    assert np.all(np.isfinite(traj["singular_values"]))
    assert np.all(np.isnan(traj["sym_eigenvalues"])) and np.all(np.isnan(traj["asymmetry"]))


def test_non_finite_vectors_are_damaged_and_resume_recomputes_them(feature_run, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(feature_run, bad)
    with h5py.File(bad, "r+") as f:
        f["right_vectors"][0, 0, 0, 0] = np.nan
    assert_one_line_error(invoke("angles", bad, "--out", tmp_path / "a", "--reference", "pca"),
                          "damaged", "non-finite singular vectors")
    res = invoke("estimate", "--out", bad, "--resume", "--feature", "blocks.0.1", "--n-samples", 2,
                 "--times", ",".join(map(str, TIMES)), "--save-vectors", 4, "--quiet")
    assert res.exit_code == 0, res.output
    with h5py.File(bad) as f, h5py.File(feature_run) as g:
        np.testing.assert_allclose(f["right_vectors"][()], g["right_vectors"][()], atol=1e-12)


def test_info_tells_the_vectors_kept(feature_run):
    res = invoke("info", feature_run)
    assert res.exit_code == 0 and "with the top 4 singular vector pairs" in res.output
    assert json.loads(invoke("info", feature_run, "--json").output)["vectors"] == 4
