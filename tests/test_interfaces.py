"""Models in other codebases' conventions: EDM preconditioned denoisers and score_sde networks.

Each test model (tests/assets/interfaces.py) computes the exact score or denoiser of a Gaussian on a
linear subspace from its own time input, with the convention's formulas written out there; the
run's spectra must equal the closed form of theory.md 3.2 (float64, relative error < 1e-10).
A wrong time label, coefficient or parameterization gives a different spectrum.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli

import spectra
from spectra.theory.linear import linear_manifold_singular_values

ASSETS = __import__("pathlib").Path(__file__).parent / "assets"
SPEC = ASSETS / "interfaces.py"
LAM = np.array([2.0, 2.0, 2.0, 0.3, 0.3, 0.3])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def check_closed_form(out, target, tol=1e-10):
    traj = spectra.load(out)
    assert traj.complete
    worst = 0.0
    for ti, (a, s) in enumerate(zip(traj["alpha"], traj["sigma"], strict=True)):
        exact = linear_manifold_singular_values(LAM, 16, a, s, target)
        for n in range(traj["x0"].shape[0]):
            worst = max(worst, rel_err(traj["singular_values"][n, ti], exact))
    assert worst < tol, worst
    return traj


# float32 (EDM's codebase): the mock's (x - U U^T x) / sigma^2 loses eps32 / sigma^2
@pytest.mark.parametrize(("factory", "dtype", "tol"), [("edm_style", "float32", 2e-4),
                                                       ("edm_from_raw", "float64", 1e-10)])
def test_edm_preconditioned_denoiser(tmp_path, factory, dtype, tol):
    out = tmp_path / "edm.h5"
    res = run("estimate", "--model", f"edm:{SPEC}:{factory}", "--data", "noise", "--n-samples", 2,
              "--times", "0.05,0.5,5", "--target", "denoiser", "--dtype", dtype, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    traj = check_closed_form(out, "denoiser", tol)
    assert traj.attrs["parameterization"] == "x0"
    sched = json.loads(traj.attrs["schedule"])
    assert sched == {"name": "edm", "sigma_min": 0.01, "sigma_max": 20.0}
    config = json.loads(traj.attrs["model_config"])
    assert config["interface"] == "edm" and config["time_label"] == "sigma"
    assert config["call_kwargs"] == {"force_fp32": True}  # both forwards take it
    np.testing.assert_array_equal(traj["sigma"], [0.05, 0.5, 5.0])


def test_class_conditional_edm(tmp_path):
    """--class-label 2 passes EDM's one-hot class_labels: class c is the Gaussian with covariance
    (c + 1) S, whose denoiser spectrum is the closed form with 3 LAM."""
    out = tmp_path / "cond.h5"
    args = ["estimate", "--model", f"edm:{SPEC}:edm_conditional", "--data", "noise", "--n-samples", 2,
            "--times", "0.05,0.5,5", "--target", "denoiser", "--out", out, "--quiet"]
    res = run(*args, "--class-label", 2)
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    for ti, s in enumerate(traj["sigma"]):
        exact = linear_manifold_singular_values(3 * LAM, 16, 1.0, s, "denoiser")
        assert rel_err(traj["singular_values"][:, ti], exact[None]) < 1e-10
    assert json.loads(traj.attrs["model_config"])["class_label"] == 2
    res = run(*args, "--resume", "--class-label", 1)
    assert res.exit_code == 2 and "class_label (2 in the file, 1 now)" in res.output
    for model, label, message in ((f"edm:{SPEC}:edm_conditional", 3, "not a class of this model (0..2)"),
                                  (f"edm:{SPEC}:edm_from_raw", 0, "EDMPrecond is not class-conditional"),
                                  (ASSETS.parent.parent / "data" / "demo.toml", 0, "not an analytic model")):
        res = run("estimate", "--model", model, "--data", "noise", "--class-label", label,
                  "--out", tmp_path / "x.h5", "--quiet")
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
        assert not (tmp_path / "x.h5").exists()


def test_edm_refuses_other_schedules_parameterizations_and_float64_for_edm_codebase(tmp_path):
    res = run("estimate", "--model", f"edm:{SPEC}:edm_style", "--data", "noise",
              "--out", tmp_path / "x.h5", "--quiet")
    assert res.exit_code == 2 and "use --dtype float32" in res.output
    assert not (tmp_path / "x.h5").exists()
    for extra in (["--schedule", "ve"], ["--parameterization", "eps"]):
        res = run("estimate", "--model", f"edm:{SPEC}:edm_style", "--data", "noise", *extra,
                  "--out", tmp_path / "x.h5", "--quiet")
        assert res.exit_code == 2 and "edm" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("factory", "schedule", "times"), [
    ("score_sde_ve", "ve", "0.2,0.5,0.8"),
    ("score_sde_vp", "vp", "0.05,0.3,0.9"),
])
@pytest.mark.parametrize("target", ["score", "eps"])
def test_score_sde_networks(tmp_path, factory, schedule, times, target):
    out = tmp_path / "sde.h5"
    res = run("estimate", "--model", f"score_sde:{SPEC}:{factory}", "--schedule", schedule,
              "--data", "noise", "--n-samples", 2, "--times", times, "--target", target,
              "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    traj = check_closed_form(out, target)
    native = {"ve": "score", "vp": "eps"}[schedule]
    assert traj.attrs["parameterization"] == native
    config = json.loads(traj.attrs["model_config"])
    assert config["interface"] == "score_sde"
    assert config["time_label"] == {"ve": "sigma", "vp": "999t"}[schedule]


def test_score_sde_needs_ve_or_vp(tmp_path):
    res = run("estimate", "--model", f"score_sde:{SPEC}:score_sde_ve", "--data", "noise",
              "--out", tmp_path / "x.h5", "--quiet")
    assert res.exit_code == 2 and "--schedule ve or vp" in res.output
    res = run("estimate", "--model", f"score_sde:{SPEC}:score_sde_ve", "--schedule", "edm",
              "--data", "noise", "--out", tmp_path / "x.h5", "--quiet")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1


def test_network_toml_with_interface(tmp_path):
    spec = tmp_path / "net.toml"
    spec.write_text(f'kind = "network"\nfactory = "{SPEC}:score_sde_vp"\ninterface = "score_sde"\n'
                    '[schedule]\nname = "vp"\n')
    out = tmp_path / "toml.h5"
    res = run("estimate", "--model", spec, "--data", "noise", "--n-samples", 1,
              "--times", "0.1,0.7", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    check_closed_form(out, "score")
    spec.write_text(f'kind = "network"\nfactory = "{SPEC}:score_sde_vp"\ninterface = "jax"\n')
    res = run("estimate", "--model", spec, "--data", "noise", "--out", tmp_path / "y.h5", "--quiet")
    assert res.exit_code == 2 and "unknown interface" in res.output
