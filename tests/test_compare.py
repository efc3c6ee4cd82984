"""`spectra compare-theory`, `spectra theory` and `spectra plot` through click, on real runs,
real HDF5 files and real PNG files."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread
from spectra_cli.main import cli

import spectra
from spectra.models import demo_manifold_spec
from spectra.spec_toml import load_manifold
from spectra.theory.linear import linear_manifold_eigenvalues

ASSETS = Path(__file__).parent / "assets"
DELTA = 0.1
DEMO_MANIFOLD = demo_manifold_spec()  # the analytic manifold of the demo network


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(res, *fragments):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for fragment in fragments:
        assert fragment in lines[0], res.output


def assert_real_figure(path: Path):
    """A PNG of the figure's size (12 x 6 inches at the default 150 dpi) with real content."""
    img = imread(path)
    assert img.shape[:2] == (900, 1800), img.shape
    rgb = img[..., :3]
    inked = np.any(rgb < 0.9, axis=-1).mean()
    colors = len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert inked > 0.02 and colors > 50, (path.name, inked, colors)


def _lambdas():
    return load_manifold(demo_manifold_spec()).covariance_eigenvalues()


TAU = np.geomspace(1.5e-4, 2000, 40)  # log-spaced in tau, ratio 1.52 between neighbours


def ve_times(tau):
    """The demo's ve times (sigma_min 0.01, sigma_max 50) at which sigma^2 = tau."""
    return np.log(np.sqrt(tau) / 0.01) / np.log(50 / 0.01)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo (analytic two-variance manifold, D = 100, m = 40), 3 anchors, a log-tau grid."""
    path = tmp_path_factory.mktemp("demo") / "run.h5"
    times = ",".join(f"{t:.17g}" for t in ve_times(TAU))
    res = invoke("estimate", "--model", DEMO_MANIFOLD,
                 "--out", path, "--n-samples", 3, "--times", times, "--quiet")
    assert res.exit_code == 0, res.output
    return path


def _datasets(path):
    with h5py.File(path) as f:
        return {name: f[name][()] for name in f if isinstance(f[name], h5py.Dataset)}


def test_compare_theory_on_the_analytic_demo(demo_run, tmp_path):
    before = _datasets(demo_run)
    out = tmp_path / "cmp"
    res = invoke("compare-theory", demo_run, "--out", out)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    rows = sorted(metrics["times"], key=lambda r: r["tau"])
    assert rows[0]["measured_dimension"] == rows[0]["predicted_dimension"] == 40
    assert rows[0]["measured_dimension_per_anchor"] == [40, 40, 40]
    assert max(r["spectrum_distance"] for r in rows) < 1e-8
    for row in rows:
        assert row["measured_dimension"] == row["predicted_dimension"]
        assert row["measured_phase"] == row["predicted_phase"]
    # generation order (tau decreasing): trivial, then manifold coverage, then consolidation
    labels = [r["measured_phase"] for r in rows[::-1]]
    assert [lab for i, lab in enumerate(labels) if i == 0 or labels[i - 1] != lab] == [
        "trivial", "manifold coverage", "consolidation"]
    assert metrics["theory"]["source"] == "run" and metrics["theory"]["m"] == 40

    # phases: measured boundaries within one grid step of the closed forms
    tau = np.array([r["tau"] for r in rows])
    np.testing.assert_allclose(tau, TAU, rtol=1e-9)
    step = TAU[1] / TAU[0] * (1 + 1e-9)
    lam = _lambdas()
    pred, meas = metrics["phases"]["predicted"], metrics["phases"]["measured"]
    assert pred["trivial_end_tau"] == pytest.approx(lam[0] * (1 - DELTA) / DELTA)
    assert pred["manifold_gap_open_tau"] == pytest.approx(lam[39] * (1 - DELTA) / DELTA)
    for key in ("trivial_end_tau", "manifold_gap_open_tau"):
        assert abs(np.log(meas[key] / pred[key])) <= np.log(step), key
    assert [g["index"] for g in pred["intermediate_gaps"]] == [20]
    assert [g["index"] for g in meas["intermediate_gaps"]] == [20]
    for key in ("tau_open", "tau_max", "tau_close"):
        p, m = pred["intermediate_gaps"][0][key], meas["intermediate_gaps"][0][key]
        assert abs(np.log(m / p)) <= np.log(step), key

    # the theory/ group: predicted values on the run's grid, measured data untouched
    after = _datasets(demo_run)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    traj = spectra.load(demo_run)
    np.testing.assert_array_equal(traj["theory/tau"], traj["tau"])
    for ti in (0, 20, 39):
        a, s = traj["alpha"][ti], traj["sigma"][ti]
        np.testing.assert_allclose(traj["theory/eigenvalues"][ti],
                                   linear_manifold_eigenvalues(lam[:40], 100, a, s, "normalized"),
                                   rtol=1e-13)
    assert traj["theory/density"].shape == (40, 1000) and np.all(traj["theory/density"] >= 0)
    np.testing.assert_allclose(traj["theory/atom"], 0.6)
    for name in metrics["figures"]:
        assert_real_figure(out / name)

    # running again replaces the group instead of stacking another one
    size = demo_run.stat().st_size
    assert invoke("compare-theory", demo_run, "--out", out).exit_code == 0
    assert abs(demo_run.stat().st_size - size) < 0.05 * size


@pytest.mark.parametrize("schedule,target", [("ddpm", "denoiser"), ("vp-sqrt", "eps")])
def test_compare_theory_under_other_schedules_and_targets(tmp_path, schedule, target):
    """Predictions are functions of tau alone: the same manifold under another schedule and
    target is still matched to round-off, with the manifold supplied by --manifold."""
    spec = tmp_path / "m.toml"
    text = (ASSETS.parent.parent / "data" / "demo.toml").read_text()
    spec.write_text(text.split("[schedule]")[0] + f'[schedule]\nname = "{schedule}"\n')
    run = tmp_path / "run.h5"
    times = "5,30,100,300,800" if schedule == "ddpm" else "0.01,0.1,0.3,0.6,0.95"
    res = invoke("estimate", "--model", spec, "--out", run, "--n-samples", 2, "--times", times,
                 "--target", target, "--quiet")
    assert res.exit_code == 0, res.output
    res = invoke("compare-theory", run, "--manifold", demo_manifold_spec(), "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert metrics["theory"]["source"] == "manifold"
    assert max(r["spectrum_distance"] for r in metrics["times"]) < 1e-8
    first = min(metrics["times"], key=lambda r: r["tau"])
    assert first["measured_dimension"] == first["predicted_dimension"] == 40


def test_gaussian_equivalent_theory_from_data_samples(tmp_path):
    """A network run has no recorded data; --data gives the Gaussian-equivalent theory of the
    samples' covariance. Here: the demo manifold's own samples against its exact run."""
    from spectra.models import load_model

    samples = load_model(DEMO_MANIFOLD).sample(20000, np.random.default_rng(1))
    np.save(tmp_path / "x.npy", samples)
    run = tmp_path / "run.h5"
    assert invoke("estimate", "--model", DEMO_MANIFOLD,
                  "--out", run, "--n-samples", 2, "--n-times", 12, "--quiet").exit_code == 0
    res = invoke("compare-theory", run, "--data", tmp_path / "x.npy", "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert metrics["theory"]["source"] == "data" and metrics["theory"]["m"] == 40
    assert max(r["spectrum_distance"] for r in metrics["times"]) < 0.02
    first = min(metrics["times"], key=lambda r: r["tau"])
    assert first["measured_dimension"] == first["predicted_dimension"] == 40
    # the analytic spec's exact covariance works as --data too
    res = invoke("compare-theory", run, "--data", demo_manifold_spec(), "--out", tmp_path / "cmp2")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "cmp2" / "metrics.json").read_text())
    assert max(r["spectrum_distance"] for r in metrics["times"]) < 1e-8


def test_theory_command(tmp_path):
    out = tmp_path / "pred.h5"
    res = invoke("theory", "--manifold", demo_manifold_spec(), "--out", out, "--n-tau", 50, "--n-grid", 300)
    assert res.exit_code == 0, res.output
    lam = _lambdas()
    with h5py.File(out) as f:
        tau, eig = f["tau"][()], f["eigenvalues"][()]
        assert tau.shape == (50,) and eig.shape == (50, 100)
        np.testing.assert_allclose(tau[[0, -1]], [1e-4, 1e3])
        np.testing.assert_allclose(eig, -tau[:, None] / (lam[None] + tau[:, None]), rtol=1e-13)
        assert f["density_grid"].shape == (300,) and f["density"].shape == (50, 300)
        np.testing.assert_allclose(f["atom"][()], 0.6)
        phases = json.loads(f.attrs["phases"])
    assert set(phases) == {"trivial_end_tau", "manifold_gap_open_tau", "manifold_gap_index",
                           "intermediate_gaps"}
    assert_one_line_error(invoke("theory", "--manifold", demo_manifold_spec(), "--out", out), "exists")
    assert invoke("theory", "--manifold", demo_manifold_spec(), "--out", out, "--overwrite").exit_code == 0


def test_plot_command(demo_run, tmp_path):
    res = invoke("plot", demo_run, "--out", tmp_path / "figs")
    assert res.exit_code == 0, res.output
    for name in ("spectrum.png", "trajectories.png", "gaps.png"):
        assert_real_figure(tmp_path / "figs" / name)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def network_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "run.h5"
    res = invoke("estimate", "--model", f"{ASSETS / 'nets.py'}:tiny", "--schedule", "ve",
                 "--parameterization", "eps", "--data", "noise", "--n-samples", 2, "--n-times", 3,
                 "--out", path, "--quiet")
    assert res.exit_code == 0, res.output
    return path


def test_runs_keeping_k_values_and_unfinished_runs(tmp_path):
    """--k K < D: values sit at their absolute positions (score keeps the normal end, the
    denoiser the tangent end); (anchor, time) pairs not done are left out."""
    times = ",".join(f"{t:.17g}" for t in ve_times(TAU[::3]))
    full, k80, den = tmp_path / "full.h5", tmp_path / "k80.h5", tmp_path / "den.h5"
    assert invoke("estimate", "--model", DEMO_MANIFOLD,
                  "--out", full, "--n-samples", 2, "--times", times, "--quiet").exit_code == 0
    assert invoke("estimate", "--model", DEMO_MANIFOLD,
                  "--out", k80, "--n-samples", 2, "--times", times, "--k", 80,
                  "--quiet").exit_code == 0
    assert invoke("estimate", "--model", DEMO_MANIFOLD,
                  "--out", den, "--n-samples", 2, "--times", times, "--k", 10,
                  "--target", "denoiser", "--quiet").exit_code == 0
    results = {}
    for run in (full, k80, den):
        res = invoke("compare-theory", run, "--out", tmp_path / run.stem)
        assert res.exit_code == 0, res.output
        results[run.stem] = json.loads((tmp_path / run.stem / "metrics.json").read_text())
    for name in ("full", "k80"):
        rows = results[name]["times"]
        assert rows[0]["measured_dimension"] == 40 and max(r["spectrum_distance"] for r in rows) < 1e-8
    assert results["k80"]["phases"]["measured"]["manifold_gap_open_tau"] == \
        results["full"]["phases"]["measured"]["manifold_gap_open_tau"]
    assert max(r["spectrum_distance"] for r in results["den"]["times"]) < 1e-8
    assert invoke("plot", den, "--out", tmp_path / "den-plots").exit_code == 0

    # an unfinished run: anchor 1 not done from time 5 on, its values garbage
    with h5py.File(full, "r+") as f:
        f["done"][1, 5:] = False
        f["singular_values"][1, 5:] = 123.0
        f.attrs["complete"] = False
    res = invoke("compare-theory", full, "--out", tmp_path / "partial")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "partial" / "metrics.json").read_text())["times"]
    assert [r["anchors_done"] for r in rows[4:7]] == [2, 1, 1]
    assert rows[6]["measured_dimension_per_anchor"][1] is None
    assert max(r["spectrum_distance"] for r in rows) < 1e-8
    with h5py.File(full, "r+") as f:
        f["done"][...] = False
    assert_one_line_error(invoke("compare-theory", full), "no finished Jacobians")


def test_a_grid_that_never_reaches_consolidation(tmp_path):
    run = tmp_path / "mid.h5"
    assert invoke("estimate", "--model", DEMO_MANIFOLD,
                  "--out", run, "--n-samples", 2, "--times", 0.5, "--quiet").exit_code == 0
    assert invoke("compare-theory", run, "--out", tmp_path / "c").exit_code == 0
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["phases"]["measured"]["manifold_gap_index"] is None
    row = metrics["times"][0]
    assert row["measured_phase"] == row["predicted_phase"] == "manifold coverage"


def test_bad_input(network_run, demo_run, tmp_path):
    before = digest(network_run)
    assert_one_line_error(invoke("compare-theory", network_run, "--out", tmp_path / "a"),
                          "does not record the data", "--manifold")
    assert_one_line_error(invoke("compare-theory", network_run, "--manifold", demo_manifold_spec(),
                                 "--out", tmp_path / "b"), "D = 100", "D = 16")
    assert_one_line_error(invoke("compare-theory", demo_run, "--manifold", demo_manifold_spec(),
                                 "--data", demo_manifold_spec()), "not both")
    assert_one_line_error(invoke("compare-theory", demo_run, "--resolution", 1.5), "--resolution")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    assert_one_line_error(invoke("compare-theory", garbage), "cannot read")
    assert_one_line_error(invoke("compare-theory", tmp_path / "missing.h5"), "not found")
    assert_one_line_error(invoke("plot", garbage), "cannot read")
    bad_spec = tmp_path / "bad.toml"
    bad_spec.write_text('kind = "gmm"\nambient_dim = 16\n')
    assert_one_line_error(invoke("theory", "--manifold", bad_spec, "--out", tmp_path / "t.h5"),
                          "gaussian")
    for body, fragment in [("seed = -1\nvariances = [1.0]", "seed"),
                           ('variances = ["1", "2"]', "numbers"),
                           ("variance_groups = [[1.0, 2.7]]", "integer counts")]:
        bad_spec.write_text(f'kind = "gaussian"\nambient_dim = 100\n{body}\n')
        for args in (("theory", "--manifold", bad_spec, "--out", tmp_path / "t.h5"),
                     ("compare-theory", demo_run, "--manifold", bad_spec)):
            res = invoke(*args)
            assert_one_line_error(res, fragment)
            assert res.output.count(str(bad_spec)) == 1, res.output
    bad_spec.write_bytes(b'kind = "gaussian"\n\xff\xfe\n')
    assert_one_line_error(invoke("theory", "--manifold", bad_spec, "--out", tmp_path / "t.h5"), "UTF-8")
    assert_one_line_error(invoke("theory", "--manifold", demo_manifold_spec(), "--out",
                                 tmp_path / "nodir" / "t.h5"), "does not exist")
    few = tmp_path / "few.npy"
    np.save(few, np.random.default_rng(0).standard_normal((30, 100)))
    assert_one_line_error(invoke("compare-theory", demo_run, "--data", few), "30 samples", "D = 100")
    run_before = digest(demo_run)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(invoke("compare-theory", demo_run, "--out", afile / "sub"), "output folder")
    assert digest(demo_run) == run_before
    assert digest(network_run) == before


def test_a_crash_while_writing_theory_leaves_the_run_as_it_was(demo_run, monkeypatch, tmp_path):
    from spectra.studies import phases as compare

    before = digest(demo_run)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        compare.compare(demo_run, tmp_path / "cmp")
    assert digest(demo_run) == before
    assert not list(demo_run.parent.glob("*.tmp"))
