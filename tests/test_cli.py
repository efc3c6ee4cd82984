"""`spectra estimate` and `spectra info` through click, on real HDF5 files."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli

import spectra
import spectra.store
from spectra.models import demo_manifold_spec
from spectra.theory.linear import linear_manifold_singular_values

DEMO_MANIFOLD = demo_manifold_spec()  # the analytic manifold of the demo network

ASSETS = __import__("pathlib").Path(__file__).parent / "assets"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_demo_estimate_and_info(tmp_path):
    out = tmp_path / "run.h5"
    res = run("estimate", "--model", DEMO_MANIFOLD, "--out", out, "--n-samples", 3, "--n-times", 4, "--quiet")
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    assert isinstance(traj, spectra.Trajectory)
    assert traj.complete and traj["done"].all()
    assert traj["singular_values"].shape == (3, 4, 100)
    assert traj["x0"].shape == (3, 100)
    path = json.loads(traj.attrs["autodiff"])
    timed = path["timings"]["paths"]  # auto took the path it timed fastest
    assert timed[f"{path['method']}/{path['engine']}/{path['context']}"] == min(timed.values())
    assert traj.attrs["method_used"] in ("jvp", "vjp") and traj.attrs["format_version"] == 2
    # the analytic two-variance manifold: the stored values are the closed form
    from spectra.models import load_model

    model = load_model(DEMO_MANIFOLD)
    lam = model.covariance_eigenvalues()
    for ti, (a, s) in enumerate(zip(traj["alpha"], traj["sigma"], strict=True)):
        exact = linear_manifold_singular_values(lam, 100, a, s, "score")
        assert rel_err(traj["singular_values"][:, ti], exact[None]) < 1e-10
    np.testing.assert_allclose(traj["tau"], traj["sigma"] ** 2 / traj["alpha"] ** 2)

    info = run("info", out)
    assert info.exit_code == 0 and "complete" in info.output
    assert f"ran {traj.attrs['method_used']}" in info.output and "measured    per product" in info.output
    data = json.loads(run("info", out, "--json").output)
    assert data["complete"] and data["n_anchors"] == 3 and data["n_times"] == 4
    assert data["k"] == 100 and data["method_used"] == traj.attrs["method_used"]


def test_every_design_attribute_and_dataset_is_present(tmp_path):
    out = tmp_path / "run.h5"
    res = run("estimate", "--out", out, "--n-samples", 2, "--times", "0.2,0.7", "--save-points",
              "--at", "noisy", "--k", 10, "--quiet")
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        for key in ("format", "format_version", "spectra_version", "created", "command", "model",
                    "model_config", "parameterization", "schedule", "target", "method", "at",
                    "dtype", "device", "seed", "complete", "step", "directions", "k"):
            assert key in f.attrs, key
        json.loads(f.attrs["model_config"]) and json.loads(f.attrs["schedule"])
        for name, shape in [("t", (2,)), ("alpha", (2,)), ("sigma", (2,)), ("tau", (2,)),
                            ("x0", (2, 100)), ("singular_values", (2, 2, 10)),
                            ("sym_eigenvalues", (2, 2, 10)), ("asymmetry", (2, 2)),
                            ("done", (2, 2)), ("seconds", (2, 2)), ("points", (2, 2, 100))]:
            assert f[name].shape == shape, name
        # noisy points are alpha x0 + sigma eps, not alpha x0
        pts, x0, alpha = f["points"][()], f["x0"][()], f["alpha"][()]
        assert not np.allclose(pts[:, 0], alpha[0] * x0)
        # kept values are the largest K, sorted descending
        sv = f["singular_values"][()]
        assert np.all(np.diff(sv, axis=-1) <= 0)


def test_network_factory_with_array_data(tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((5, 16)))
    out = tmp_path / "run.h5"
    res = run("estimate", "--model", f"{ASSETS / 'nets.py'}:tiny", "--schedule", "ve",
              "--parameterization", "eps", "--data", data, "--n-times", 3, "--target", "denoiser",
              "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    traj = spectra.store.load(out)
    assert traj["singular_values"].shape == (5, 3, 16)
    assert traj.attrs["parameterization"] == "eps"
    assert np.all(traj["asymmetry"] > 1e-3)  # a random network's Jacobian is not symmetric


def test_noise_data_needs_a_shape_for_flat_nets(tmp_path):
    out = tmp_path / "run.h5"
    res = run("estimate", "--model", f"{ASSETS / 'nets.py'}:tiny", "--schedule", "ve",
              "--parameterization", "eps", "--data", "noise", "--shape", "16",
              "--n-samples", 2, "--n-times", 2, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert spectra.store.load(out)["x0"].shape == (2, 16)


@pytest.mark.parametrize("method", ["vjp", "fd-central", "fd-forward"])
def test_methods_through_the_cli(tmp_path, method):
    out = tmp_path / "run.h5"
    res = run("estimate", "--out", out, "--n-samples", 2, "--times", "0.5", "--method", method,
              "--quiet")
    assert res.exit_code == 0, res.output
    traj = spectra.store.load(out)
    assert traj.attrs["method_used"] == method


def test_ddpm_grid_is_integer(tmp_path):
    spec = tmp_path / "m.toml"
    spec.write_text('kind = "gaussian"\nambient_dim = 8\nvariances = [1.0, 0.5]\n'
                    '[schedule]\nname = "ddpm"\n')
    out = tmp_path / "run.h5"
    res = run("estimate", "--model", spec, "--out", out, "--n-times", 6, "--n-samples", 1,
              "--quiet")
    assert res.exit_code == 0, res.output
    t = spectra.store.load(out)["t"]
    np.testing.assert_array_equal(t, np.round(t))
    assert t.min() >= 1 and t.max() == 999


def test_overwrite_replaces(tmp_path):
    out = tmp_path / "run.h5"
    assert run("estimate", "--out", out, "--n-samples", 1, "--n-times", 2, "--quiet").exit_code == 0
    res = run("estimate", "--out", out, "--n-samples", 2, "--n-times", 2, "--overwrite", "--quiet")
    assert res.exit_code == 0
    assert spectra.store.load(out)["x0"].shape[0] == 2
