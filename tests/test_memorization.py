"""Issue 18: sampling (`spectra sample`), memorization (`spectra memorization`), training on arrays
and images (the small U-Net, --snapshot-every), following snapshots (`spectra estimate --model
FOLDER`), `spectra dataset` and `spectra crossover`; through click on real files.

References are formulas or independent computations: the covariance of a linear manifold, scipy's
cdist, EDM's rho-spacing written out here, the ve/ddpm schedules' closed forms, scikit-learn's
digits, and [B]'s closed form M*/N = 1 - mean(t^2)/C on the VP-sqrt grid.
"""

import json

import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.spatial.distance import cdist
from spectra_cli.main import cli

import spectra.sampling
import spectra.store
import spectra.studies.memorization as memo
from spectra.errors import SpectraError
from spectra.models import load_model
from spectra.sampling import noise_levels, sample

VARIANCES = [4.0, 2.0, 1.0, 0.5, 0.25]
MANIFOLD = """kind = "gaussian"
ambient_dim = 20
variances = [4.0, 2.0, 1.0, 0.5, 0.25]
[schedule]
name = "ve"
"""
EMPIRICAL = """kind = "empirical"
points = "train.npy"
[schedule]
name = "ve"
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(res):
    """Exit status 2 and exactly one line on stderr, `error: ...`, no traceback."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """manifold.toml, train.npy (30 points of the manifold) and emp.toml (their empirical model)."""
    root = tmp_path_factory.mktemp("memo")
    (root / "manifold.toml").write_text(MANIFOLD)
    train = load_model(str(root / "manifold.toml")).sample(30, np.random.default_rng(1))
    np.save(root / "train.npy", train)
    (root / "emp.toml").write_text(EMPIRICAL)
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def top_eigenvalues(x):
    return np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]


# --- 1. the sampler on an analytic linear manifold ---------------------------------------------
def test_heun_samples_have_the_manifold_covariance(files):
    model = load_model(str(files / "manifold.toml"))
    out = sample(model, 2000, seed=0)
    assert out.x.shape == (2000, 20) and out.sampler == "heun" and len(out.times) == 32
    assert out.evaluations == 2 * 32 - 1
    ev = top_eigenvalues(out.x)
    np.testing.assert_allclose(ev[:5], VARIANCES, rtol=0.10)
    # the last step is the denoiser, which removes every direction normal to the manifold
    assert np.all(np.abs(ev[5:]) < 1e-6), ev[5:]


def test_ancestral_samples_have_the_manifold_covariance(files):
    model = load_model(str(files / "manifold.toml"))
    out = sample(model, 2000, steps=1000, sampler="ancestral", seed=0)
    assert out.evaluations == 1000
    ev = top_eigenvalues(out.x)
    np.testing.assert_allclose(ev[:5], VARIANCES, rtol=0.10)
    assert np.all(np.abs(ev[5:]) < 1e-6), ev[5:]


@pytest.mark.parametrize("sampler", ["heun", "ancestral"])
def test_samples_depend_on_the_seed_only(files, monkeypatch, sampler):
    model = load_model(str(files / "manifold.toml"))
    a = sample(model, 50, steps=12, sampler=sampler, seed=3).x
    b = sample(model, 50, steps=12, sampler=sampler, seed=3).x
    c = sample(model, 50, steps=12, sampler=sampler, seed=4).x
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    # batches of 7 samples (the last one short) instead of all 50 at once: the same samples. Not
    # bit for bit: the analytic denoiser's batched einsum rounds rows differently by batch size
    # (about 1e-16 per evaluation); a draw that depended on the batch would differ by O(1)
    per_sample = 8 * 20 * max(1, model.activation_factor)
    monkeypatch.setattr(spectra.sampling, "_BATCH_BYTES", 7 * per_sample)
    calls = []
    target = model.target

    def counting(x, t, kind):
        calls.append(len(x))
        return target(x, t, kind)

    monkeypatch.setattr(model, "target", counting)
    d = sample(model, 50, steps=12, sampler=sampler, seed=3).x
    assert max(calls) == 7  # the batching really changed
    np.testing.assert_allclose(d, a, rtol=0, atol=1e-12)


def test_sampler_refuses_bad_requests(files):
    model = load_model(str(files / "manifold.toml"))
    for kwargs in ({"sampler": "euler"}, {"steps": 1}):
        with pytest.raises(SpectraError):
            sample(model, 4, **kwargs)
    with pytest.raises(SpectraError):
        sample(model, 0)


# --- 4. noise levels ---------------------------------------------------------------------------
def test_noise_levels_follow_edm_rho_spacing_on_ve(files):
    model = load_model(str(files / "manifold.toml"))  # ve, sigma in [0.01, 50], range t in [0.01, 1]
    times, s = noise_levels(model, 18)
    assert times.shape == s.shape == (18,)
    assert np.all(np.diff(s) < 0) and np.all(np.diff(times) < 0)
    s_max, s_min = 50.0, 0.01 * 5000.0**0.01  # sigma(t) = 0.01 * 5000^t at t = 1 and t = 0.01
    np.testing.assert_allclose([s[0], s[-1]], [s_max, s_min], rtol=1e-12)
    np.testing.assert_allclose([times[0], times[-1]], [1.0, 0.01], atol=1e-12)
    rho = 7.0
    i = np.arange(18)
    expected = (s_max ** (1 / rho) + i / 17 * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    np.testing.assert_allclose(s, expected, rtol=1e-12)
    np.testing.assert_allclose(times, np.log(expected / 0.01) / np.log(5000.0), atol=1e-12)
    # a narrower range: the same formula between its own ends
    times, s = noise_levels(model, 5, t_min=0.2, t_max=0.6)
    lo, hi = 0.01 * 5000.0**0.2, 0.01 * 5000.0**0.6
    expected = (hi ** (1 / rho) + np.arange(5) / 4 * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    np.testing.assert_allclose(s, expected, rtol=1e-12)


def test_noise_levels_on_ddpm_are_decreasing_integer_steps(tmp_path):
    spec = tmp_path / "ddpm.toml"
    spec.write_text(MANIFOLD.replace('name = "ve"', 'name = "ddpm"'))
    model = load_model(str(spec))
    abar = np.cumprod(1.0 - np.linspace(1e-4, 2e-2, 1000))
    for steps in (10, 400):
        times, s = noise_levels(model, steps)
        assert np.all(times == np.round(times)) and np.all(np.diff(times) < 0)
        assert times[0] == 999 and times[-1] == 1 and len(times) <= steps
        idx = times.astype(int)
        np.testing.assert_allclose(s, np.sqrt((1 - abar[idx]) / abar[idx]), rtol=1e-12)
    # 400 rho-spaced levels crowd the low end: the repeats there are merged, the steps unique
    assert len(noise_levels(model, 400)[0]) < 400


def test_noise_levels_refuse_bad_ranges(files):
    model = load_model(str(files / "manifold.toml"))
    with pytest.raises(SpectraError):
        noise_levels(model, 1)
    with pytest.raises(SpectraError):
        noise_levels(model, 8, t_min=0.5, t_max=0.5)
    with pytest.raises(SpectraError):
        noise_levels(model, 8, t_max=2.0)


# --- 3. nearest_two and the memorized fraction -------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 50])
def test_nearest_two_matches_brute_force(monkeypatch, chunk):
    if chunk is not None:  # several chunks of samples
        monkeypatch.setattr(memo, "_CHUNK", chunk)
    rng = np.random.default_rng(5)
    samples, train = rng.standard_normal((37, 2, 3)), rng.standard_normal((11, 6))
    d1, d2, index = memo.nearest_two(samples, train)
    dist = cdist(samples.reshape(37, -1), train)
    srt = np.sort(dist, axis=1)
    np.testing.assert_allclose(d1, srt[:, 0], rtol=1e-12)
    np.testing.assert_allclose(d2, srt[:, 1], rtol=1e-12)
    assert np.all(srt[:, 1] > srt[:, 0])  # no ties: the index is determined
    np.testing.assert_array_equal(index, dist.argmin(axis=1))
    ratio = srt[:, 0] / srt[:, 1]
    assert memo.memorized_fraction(samples, train) == pytest.approx(np.mean(ratio < 1 / 3))
    assert memo.memorized_fraction(samples, train, 0.6) == pytest.approx(np.mean(ratio < 0.6))


def test_memorized_fraction_by_hand():
    train = np.array([[0.0, 0.0], [10.0, 0.0]])
    # distances (1, 9): 1/9 memorized; (4, 6): 2/3 not; (0, 10): 0 memorized; (5, 5): 1 not
    samples = np.array([[1.0, 0.0], [4.0, 0.0], [10.0, 0.0], [5.0, 0.0]])
    d1, d2, index = memo.nearest_two(samples, train)
    np.testing.assert_allclose(d1, [1, 4, 0, 5])
    np.testing.assert_allclose(d2, [9, 6, 10, 5])
    np.testing.assert_array_equal(index[:3], [0, 0, 1])
    assert memo.memorized_fraction(samples, train) == 0.5


def test_nearest_two_needs_two_training_points():
    with pytest.raises(SpectraError, match="at least 2"):
        memo.nearest_two(np.zeros((3, 4)), np.ones((1, 4)))
    with pytest.raises(SpectraError):
        memo.nearest_two(np.zeros((3, 4)), np.ones((5, 3)))


# --- 2. memorization: the empirical model against the manifold ---------------------------------
def test_empirical_model_samples_are_training_points(files):
    train = np.load(files / "train.npy")
    model = load_model(str(files / "emp.toml"))
    x = sample(model, 200, seed=0).x
    dist = cdist(x, train)
    assert np.all(dist.min(axis=1) < 1e-6), dist.min(axis=1).max()
    assert memo.memorized_fraction(x, train) == 1.0
    # and not all the same point: the sampler reaches many of the 30
    assert len(np.unique(dist.argmin(axis=1))) >= 15


def read_metrics(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["format"] == "spectra-metrics" and metrics["kind"] == "memorization"
    assert set(metrics["figures"]) == {"nearest.png", "ratios.png"}
    for name in metrics["figures"]:
        image = matplotlib.image.imread(folder / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert (image[..., :3].mean(axis=-1) < 0.3).any()  # something drawn in the figure
    rows = metrics["samples"]
    ratio = np.array([r["ratio"] for r in rows])
    np.testing.assert_allclose(ratio, [r["nearest"] / r["second"] for r in rows], rtol=1e-12)
    assert metrics["memorized_fraction"] == pytest.approx(np.mean(ratio < 1 / 3))
    return metrics


def test_cli_memorization_empirical_against_manifold(files, tmp_path):
    train = np.load(files / "train.npy")
    # the manifold generalizes: its samples are new points, far from the 30 training points
    res = run("memorization", "--model", files / "manifold.toml", "--train-data", files / "train.npy",
              "--n", 200, "--out", tmp_path / "gen", "--quiet")
    assert res.exit_code == 0, res.output
    gen = read_metrics(tmp_path / "gen")
    assert gen["n_generated"] == 200 and gen["n_train"] == 30
    assert gen["memorized_fraction"] <= 0.05
    # the per-sample distances are those of the manifold's samples (same seed) to train.npy
    x = sample(load_model(str(files / "manifold.toml")), 200, seed=0).x
    dist = cdist(x, train)
    np.testing.assert_allclose([r["nearest"] for r in gen["samples"]], dist.min(axis=1), rtol=1e-9)
    np.testing.assert_allclose([r["second"] for r in gen["samples"]], np.sort(dist, axis=1)[:, 1],
                               rtol=1e-9)
    assert [r["nearest_index"] for r in gen["samples"]] == dist.argmin(axis=1).tolist()

    # the empirical model of the same points memorizes: every sample is a training point; the
    # training set defaults to the model's own points
    res = run("memorization", "--model", files / "emp.toml", "--n", 200, "--out", tmp_path / "mem",
              "--quiet")
    assert res.exit_code == 0, res.output
    mem = read_metrics(tmp_path / "mem")
    assert mem["n_train"] == 30 and mem["memorized_fraction"] >= 0.99
    assert max(r["nearest"] for r in mem["samples"]) < 1e-6
    assert all(0 <= r["nearest_index"] < 30 for r in mem["samples"])
    assert "memorized fraction 1.000 of 200" in res.output


def test_cli_memorization_needs_a_training_set(files, tmp_path):
    res = run("memorization", "--model", files / "manifold.toml", "--n", 5, "--out", tmp_path / "m",
              "--quiet")
    assert_user_error(res)
    assert not (tmp_path / "m" / "metrics.json").exists()


# --- 7. spectra sample -------------------------------------------------------------------------
def test_cli_sample_writes_and_guards_its_files(files, tmp_path):
    out = tmp_path / "S.npy"
    res = run("sample", "--model", files / "manifold.toml", "--n", 40, "--out", out, "--seed", 2,
              "--steps", 16, "--quiet")
    assert res.exit_code == 0, res.output
    x = np.load(out)
    assert x.shape == (40, 20)
    # the samples lie on the 5-dimensional manifold: rank 5, with its spread
    sv = np.linalg.svd(x, compute_uv=False)
    assert sv[4] > 1.0 and sv[5] < 1e-8 * sv[0]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["format"] == "spectra-samples" and record["sampler"] == "heun"
    assert record["seed"] == 2 and record["shape"] == [40, 20] and record["steps"] == 16
    assert len(record["times"]) == 16 and np.all(np.diff(record["times"]) < 0)
    assert np.all(np.diff(record["noise_levels"]) < 0)

    before = out.read_bytes()
    res = run("sample", "--model", files / "manifold.toml", "--n", 40, "--out", out, "--seed", 3,
              "--quiet")
    assert_user_error(res)
    assert out.read_bytes() == before
    res = run("sample", "--model", files / "manifold.toml", "--n", 10, "--out", out, "--seed", 3,
              "--sampler", "ancestral", "--steps", 8, "--overwrite", "--quiet")
    assert res.exit_code == 0, res.output
    assert np.load(out).shape == (10, 20)
    assert json.loads(out.with_suffix(".json").read_text())["sampler"] == "ancestral"

    # an .npy spectra did not write is never replaced, with or without a record beside it
    foreign = tmp_path / "F.npy"
    np.save(foreign, np.arange(6.0))
    content = foreign.read_bytes()
    res = run("sample", "--model", files / "manifold.toml", "--n", 4, "--out", foreign, "--overwrite",
              "--quiet")
    assert_user_error(res)
    assert foreign.read_bytes() == content and not foreign.with_suffix(".json").exists()
    foreign.with_suffix(".json").write_text('{"format": "something else"}')
    res = run("sample", "--model", files / "manifold.toml", "--n", 4, "--out", foreign, "--overwrite",
              "--quiet")
    assert_user_error(res)
    assert foreign.read_bytes() == content


# --- 8. spectra dataset ------------------------------------------------------------------------
def test_cli_dataset_digits(tmp_path):
    from sklearn.datasets import load_digits

    out = tmp_path / "d.npz"
    res = run("dataset", "digits", "--out", out)
    assert res.exit_code == 0, res.output
    with np.load(out) as f:
        assert set(f.files) == {"x", "labels", "format"}
        assert str(f["format"]) == "spectra-dataset:digits"
        x, labels = f["x"], f["labels"]
    assert x.shape == (1797, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert x.min() == -1 and x.max() == 1
    assert sorted(set(labels.tolist())) == list(range(10))
    bunch = load_digits()
    np.testing.assert_array_equal(labels, bunch.target)
    np.testing.assert_allclose(x[:, 0], bunch.images / 8.0 - 1.0, rtol=0, atol=0)
    assert_user_error(run("dataset", "digits", "--out", out))  # exists
    assert run("dataset", "digits", "--out", out, "--overwrite").exit_code == 0
    assert_user_error(run("dataset", "digits", "--out", tmp_path / "d.npy"))
    assert not (tmp_path / "d.npy").exists()
    foreign = tmp_path / "f.npz"
    np.savez(foreign, a=np.zeros(3))
    content = foreign.read_bytes()
    assert_user_error(run("dataset", "digits", "--out", foreign, "--overwrite"))
    assert foreign.read_bytes() == content


# --- 9. spectra crossover ----------------------------------------------------------------------
def paper_fraction(c):
    """[B]'s M*/N on the VP-sqrt grid t_l = 0.999 - 0.998 l/25, uniform weights, s*^2 = 1:
    1/(psi_t + 1) = t^2, so M*/N = 1 - mean(t^2)/C."""
    t = 0.999 - 0.998 * np.arange(26) / 25
    return 1 - np.mean(t**2) / c


def test_cli_crossover():
    res = run("crossover")
    assert res.exit_code == 0, res.output
    for c, printed in ((1, "0.660"), (1.5, "0.774"), (2, "0.830")):
        assert f"{paper_fraction(c):.3f}" == printed
        assert f"C = {c:g}: M*/N = {printed}" in res.output
    res = run("crossover", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["schedule"] == "vp-sqrt" and len(data["times"]) == 26
    np.testing.assert_allclose(data["times"], 0.999 - 0.998 * np.arange(26) / 25, rtol=1e-12)
    assert [row["C"] for row in data["crossover"]] == [1, 1.5, 2]
    np.testing.assert_allclose([row["critical_fraction"] for row in data["crossover"]],
                               [paper_fraction(c) for c in (1, 1.5, 2)], rtol=1e-12)
    res = run("crossover", "--n-train", 100, "--C", 1)
    assert res.exit_code == 0, res.output
    assert f"M* = {100 * paper_fraction(1):.1f}" == "M* = 66.0"
    assert "M* = 66.0 of N = 100" in res.output
    # weights lambda(t): a single nonzero weight at t gives 1 - t^2 / C
    weights = ",".join(["0"] * 25 + ["1"])
    data = json.loads(run("crossover", "--weights", weights, "--C", 2, "--json").output)
    assert data["crossover"][0]["critical_fraction"] == pytest.approx(1 - 0.001**2 / 2, rel=1e-12)


@pytest.mark.parametrize("args", [("--C", 0), ("--weights", "1,2"), ("--C", -1), ("--variance", 0),
                                  ("--t-max", 1.5)])
def test_cli_crossover_refuses_bad_input(args):
    assert_user_error(run("crossover", *args))


# --- 5, 6, 10. training on image arrays, snapshots ---------------------------------------------
TRAIN = ("--n-train", 32, "--width", 8, "--batch-size", 32, "--quiet")


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    from spectra.datasets import digits

    path = tmp_path_factory.mktemp("digits") / "digits.npy"
    np.save(path, digits()[0])  # (1797, 1, 8, 8)
    return path


@pytest.fixture(scope="module")
def unet(digits_file):
    """A U-Net trained 200 steps on the first 32 digits, with snapshots at 100 and 200."""
    out = digits_file.parent / "ck.pt"
    res = run("train", "--data", digits_file, "--steps", 200, "--out", out, "--snapshot-every", 100, *TRAIN)
    assert res.exit_code == 0, res.output
    return out


def config_of(path):
    ck = torch.load(path, weights_only=True)
    return ck, json.loads(ck["config"])


def test_train_unet_on_digits_and_estimate(unet, digits_file, tmp_path):
    ck, config = config_of(unet)
    assert config["network"]["class"] == "SmallUNet" and config["shape"] == [1, 8, 8]
    assert config["options"]["dtype"] == "float32" and int(ck["step"]) == 200
    digits = np.load(digits_file)
    np.testing.assert_allclose(ck["train_points"].numpy().reshape(32, 1, 8, 8), digits[:32])
    snaps = unet.parent / "ck-snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step-00000100.pt", "step-00000200.pt"]
    snap, _ = config_of(snaps / "step-00000100.pt")
    assert int(snap["step"]) == 100 and "optimizer" not in snap
    last, _ = config_of(snaps / "step-00000200.pt")
    for key in ck["ema"]:  # the last snapshot holds the final EMA weights
        assert torch.equal(last["ema"][key], ck["ema"][key]), key
    assert not all(torch.equal(snap["ema"][k], ck["ema"][k]) for k in ck["ema"])

    run_file = tmp_path / "run.h5"
    res = run("estimate", "--model", unet, "--out", run_file, "--n-times", 3, "--n-samples", 2, "--quiet")
    assert res.exit_code == 0, res.output
    traj = spectra.store.load(run_file)
    assert traj.complete
    # the anchors default to the checkpoint's training points: the first two digits
    np.testing.assert_allclose(np.asarray(traj["x0"]).reshape(2, 64), digits[:2].reshape(2, 64))
    assert np.asarray(traj["singular_values"]).shape[:2] == (2, 3)
    res = run("compare-theory", run_file, "--data", digits_file)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run-theory" / "metrics.json").exists()


def test_train_mlp_on_image_data_flattens(digits_file, tmp_path):
    out = tmp_path / "mlp.pt"
    res = run("train", "--data", digits_file, "--steps", 5, "--out", out, "--network", "mlp", *TRAIN)
    assert res.exit_code == 0, res.output
    ck, config = config_of(out)
    assert config["network"]["class"] == "ResidualMLP" and config["shape"] == [1, 8, 8]
    assert config["options"]["dtype"] == "float64"
    # the MLP's input and output layers take and give the 64 flattened pixels
    assert tuple(ck["ema"]["inp.weight"].shape) == (8, 64)
    assert tuple(ck["ema"]["out.weight"].shape) == (64, 8)
    model = load_model(str(out))
    assert tuple(model.shape) == (1, 8, 8)
    x = sample(model, 3, steps=4).x
    assert x.shape == (3, 1, 8, 8) and np.all(np.isfinite(x))


def test_unet_resume_matches_one_run(digits_file, tmp_path):
    whole, parts = tmp_path / "whole.pt", tmp_path / "parts.pt"
    opts = ("--data", digits_file, *TRAIN, "--checkpoint-every", 1000)
    assert run("train", "--out", whole, "--steps", 60, *opts).exit_code == 0
    assert run("train", "--out", parts, "--steps", 30, *opts).exit_code == 0
    half, _ = config_of(parts)
    res = run("train", "--out", parts, "--steps", 60, "--resume", *opts)
    assert res.exit_code == 0, res.output
    a, config = config_of(whole)
    b, _ = config_of(parts)
    assert config["network"]["class"] == "SmallUNet" and config["options"]["dtype"] == "float32"
    assert int(b["step"]) == 60
    for key in a["ema"]:
        assert a["ema"][key].dtype == torch.float32
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    # the second half did move the weights
    assert not all(torch.equal(half["ema"][k], b["ema"][k]) for k in b["ema"])


def test_estimate_follows_snapshots(unet, tmp_path):
    out = tmp_path / "snapdir"
    res = run("estimate", "--model", unet.parent / "ck-snapshots", "--out", out, "--n-times", 3,
              "--n-samples", 2, "--generated", 10, "--quiet")
    assert res.exit_code == 0, res.output
    for name in ("step-00000100.h5", "step-00000200.h5"):
        traj = spectra.store.load(out / name)
        assert traj.complete
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "snapshots" and summary["generated"] == 10
    rows = summary["snapshots"]
    assert [r["step"] for r in rows] == [100, 200]
    for row in rows:
        assert 0 <= row["kept_directions"] <= 64
        assert 0.0 <= row["memorized_fraction"] <= 1.0
    image = matplotlib.image.imread(out / "summary.png")
    assert (image[..., :3].mean(axis=-1) < 0.3).any()
    assert "step 100:" in res.output and "step 200:" in res.output


def test_train_refuses_bad_array_input(digits_file, tmp_path):
    res = run("train", "--data", digits_file, "--steps", 2, "--out", tmp_path / "a.pt", "--n-train", 1798,
              "--quiet")
    assert_user_error(res)
    assert "1798" in res.stderr and "1797" in res.stderr
    flat = tmp_path / "flat.npy"
    np.save(flat, np.random.default_rng(0).standard_normal((10, 20)))
    res = run("train", "--data", flat, "--steps", 2, "--out", tmp_path / "b.pt", "--network", "unet",
              "--quiet")
    assert_user_error(res)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_sample_reads_a_bare_factory_module_as_estimate_does(tmp_path):
    """A factory's bare module needs --schedule and --parameterization (one line, exit 2 without);
    with them the samples have its sample shape and are finite."""
    from pathlib import Path

    factory = f"{Path(__file__).parent / 'assets' / 'nets.py'}:tiny"
    assert_user_error(run("sample", "--model", factory, "--n", 3, "--out", tmp_path / "a.npy", "--quiet"))
    res = run("sample", "--model", factory, "--schedule", "ve", "--parameterization", "eps", "--n", 3,
              "--steps", 4, "--out", tmp_path / "s.npy", "--quiet")
    assert res.exit_code == 0, res.output
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (3, 16) and np.all(np.isfinite(x))


# --- review fixes: reruns, mixed trainings, foreign files, damaged checkpoints -----------------
def test_following_snapshots_again_resumes_and_refuses_other_options(unet, tmp_path):
    """A second run into the same folder resumes (complete runs return at once, same summary);
    other options are refused in one line, the runs untouched."""
    snaps, out = unet.parent / "ck-snapshots", tmp_path / "snapdir"
    args = ("estimate", "--model", snaps, "--out", out, "--n-samples", 2, "--generated", 0, "--quiet")
    assert run(*args, "--n-times", 3).exit_code == 0
    before = (out / "step-00000100.h5").read_bytes()
    first = json.loads((out / "summary.json").read_text())
    res = run(*args, "--n-times", 3)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text()) == first
    assert_user_error(run(*args, "--n-times", 4))
    assert (out / "step-00000100.h5").read_bytes() == before


def test_snapshots_of_one_name_or_of_two_trainings_are_refused(unet, digits_file, tmp_path):
    snaps = unet.parent / "ck-snapshots"
    other = tmp_path / "other.pt"
    assert run("train", "--data", digits_file, "--steps", 30, "--out", other, "--snapshot-every", 30,
               "--seed", 1, *TRAIN).exit_code == 0
    twin = tmp_path / "other-snapshots" / "step-00000030.pt"
    copy = tmp_path / "copy" / "step-00000100.pt"  # the same snapshot under the same name elsewhere
    copy.parent.mkdir()
    copy.write_bytes((snaps / "step-00000100.pt").read_bytes())
    res = run("estimate", "--model", f"{snaps / 'step-00000100.pt'},{copy}", "--out", tmp_path / "d1",
              "--n-times", 2, "--quiet")
    assert_user_error(res)
    assert "share the name" in res.stderr
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.pt").write_bytes((snaps / "step-00000100.pt").read_bytes())
    (mixed / "b.pt").write_bytes(twin.read_bytes())
    res = run("estimate", "--model", mixed, "--out", tmp_path / "d2", "--n-times", 2, "--quiet")
    assert_user_error(res)
    assert "different trainings" in res.stderr


def test_a_new_training_refuses_an_old_snapshot_folder(unet, digits_file, tmp_path):
    out = tmp_path / "ck.pt"
    args = ("train", "--data", digits_file, "--steps", 4, "--out", out, "--snapshot-every", 2, *TRAIN)
    assert run(*args).exit_code == 0
    res = run(*args, "--overwrite")
    assert_user_error(res)
    assert "earlier training" in res.stderr
    assert sorted(p.name for p in (tmp_path / "ck-snapshots").iterdir()) == ["step-00000002.pt",
                                                                             "step-00000004.pt"]
    (tmp_path / "in-snapshots").write_text("mine")
    res = run("train", "--data", digits_file, "--steps", 2, "--out", tmp_path / "in.pt",
              "--snapshot-every", 1, *TRAIN)
    assert_user_error(res)
    assert not (tmp_path / "in.pt").exists() and (tmp_path / "in-snapshots").read_text() == "mine"


def test_a_checkpoint_from_before_the_network_options_resumes(digits_file, tmp_path):
    """A flat-data MLP checkpoint whose config has no shape and whose options have no network,
    dtype or snapshot_every (as spectra wrote before them) resumes with the default options."""
    from spectra.checkpoint import write_checkpoint

    flat = tmp_path / "flat.npy"
    np.save(flat, np.load(digits_file)[:40].reshape(40, 64))
    out = tmp_path / "old.pt"
    args = ("train", "--data", flat, "--n-train", 32, "--batch-size", 16, "--width", 8, "--quiet")
    assert run(*args, "--steps", 3, "--out", out).exit_code == 0
    ck, config = config_of(out)
    del config["shape"]
    for key in ("network", "dtype", "snapshot_every"):
        del config["options"][key]
    ck = {k: v for k, v in ck.items() if k not in ("format", "format_version")}
    write_checkpoint(out, {**ck, "config": json.dumps(config)})
    res = run(*args, "--steps", 6, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert int(torch.load(out, weights_only=True)["step"]) == 6


def test_a_checkpoint_shape_of_negative_sizes_is_refused(unet, tmp_path):
    from spectra.checkpoint import write_checkpoint

    ck, config = config_of(unet)
    config["shape"] = [-8, -8]
    config["dim"] = 64
    bad = tmp_path / "bad.pt"
    write_checkpoint(bad, {**{k: v for k, v in ck.items() if k not in ("format", "format_version")},
                           "config": json.dumps(config)})
    res = run("sample", "--model", bad, "--n", 2, "--steps", 2, "--out", tmp_path / "s.npy", "--quiet")
    assert_user_error(res)
    assert "damaged" in res.stderr


def test_dataset_never_replaces_a_users_archive(tmp_path):
    mine = tmp_path / "mine.npz"
    np.savez(mine, x=np.zeros((2, 3)), labels=np.zeros(2))
    before = mine.read_bytes()
    assert_user_error(run("dataset", "digits", "--out", mine, "--overwrite"))
    assert mine.read_bytes() == before
    ours = tmp_path / "ours.npz"
    assert run("dataset", "digits", "--out", ours).exit_code == 0
    assert run("dataset", "digits", "--out", ours, "--overwrite").exit_code == 0


def test_memorization_never_replaces_another_commands_metrics(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    theirs = json.dumps({"format": "spectra-metrics", "run": "r.h5", "times": []})
    (out / "metrics.json").write_text(theirs)
    res = run("memorization", "--model", files / "emp.toml", "--n", 5, "--steps", 4, "--out", out, "--quiet")
    assert_user_error(res)
    assert (out / "metrics.json").read_text() == theirs


def test_memorization_refuses_one_training_point_before_sampling(files, tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, 20)))
    out = tmp_path / "never"
    res = run("memorization", "--model", files / "manifold.toml", "--train-data", one, "--n", 5, "--out", out,
              "--quiet")
    assert_user_error(res)
    assert not out.exists()


def test_sample_refuses_a_vanishing_noise_level(tmp_path):
    spec = tmp_path / "vps.toml"
    spec.write_text(MANIFOLD.replace('name = "ve"', 'name = "vp-sqrt"'))
    res = run("sample", "--model", spec, "--n", 2, "--steps", 3, "--t-min", 1e-300,
              "--out", tmp_path / "s.npy", "--quiet")
    assert_user_error(res)
    assert not (tmp_path / "s.npy").exists()


def test_crossover_bounds_and_other_schedules():
    assert_user_error(run("crossover", "--C", 0.5))
    res = run("crossover", "--schedule", "ddpm", "--C", 1, "--json")
    assert res.exit_code == 0, res.output
    times = json.loads(res.output)["times"]
    assert times == sorted(times, reverse=True) and all(t == int(t) for t in times)
