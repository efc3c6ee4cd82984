"""Where spectra meets the researcher's other tools: start-up without torch, labelled files in
xarray and pandas, the Python API on a model in memory, files of the previous format version."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli

import spectra
from spectra.models import linear_manifold
from spectra.schedules import Schedule
from spectra.theory.linear import linear_manifold_singular_values

HEAVY = ("torch", "scipy", "matplotlib")


def _imports_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; which heavy modules it imported, and its exit status."""
    probe = f"""
import sys, json
status = 0
try:
{chr(10).join('    ' + line for line in code.splitlines())}
except SystemExit as exc:
    status = exc.code
print(json.dumps({{"status": status, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["--help"], ["estimate", "--help"], ["compare-theory", "--help"], ["--version"],
    ["estimate", "--out", "x.h5", "--resume", "--overwrite"],          # conflicting options
    ["estimate", "--out", "x.h5", "--method", "topk", "--directions", "haar"],
    ["estimate", "--out", "x.h5", "--n-times", "oops"],                  # a click usage error
])
def test_help_and_option_errors_import_no_torch(args):
    seen = _imports_after(f"from spectra_cli.main import cli\ncli({args!r})")
    assert seen["heavy"] == [], seen
    assert seen["status"] == (0 if args[-1] in ("--help", "--version") else 2)


def _demo_run(tmp_path, *extra):
    out = tmp_path / "run.h5"
    res = CliRunner().invoke(cli, ["estimate", "--out", str(out), "--n-samples", "3", "--n-times", "4",
                                   "--quiet", *extra])
    assert res.exit_code == 0, res.output
    return out


def test_run_opens_labelled_in_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    out = _demo_run(tmp_path)
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert not [d for d in ds.dims if str(d).startswith("phony")], ds.dims
        assert dict(ds.sizes) == {"anchor": 3, "time": 4, "value": 100, "feature": 100}
        for name in ("t", "tau", "sigma", "alpha"):
            assert name in ds.coords and ds[name].dims == ("time",)
        assert ds["singular_values"].dims == ("anchor", "time", "value")
        assert ds["x0"].dims == ("anchor", "feature")
        run = spectra.load(out)
        np.testing.assert_array_equal(ds["singular_values"].values, run["singular_values"])
        np.testing.assert_array_equal(ds["tau"].values, run["tau"])
    mem = run.to_xarray()
    assert mem["singular_values"].dims == ("anchor", "time", "value") and "tau" in mem.coords
    frame = run.to_pandas()
    assert len(frame) == 3 * 4 * 100
    row = frame.iloc[105]  # anchor 0, time 1, value 5
    assert (row["anchor"], row["time"], row["value"]) == (0, 1, 5)
    assert row["singular_values"] == run["singular_values"][0, 1, 5] and row["tau"] == run["tau"][1]


def test_a_format_1_file_still_loads_and_resumes(tmp_path):
    """A run of the previous format (the same datasets without dimension scales) loads, labels
    in memory and resumes."""
    out = _demo_run(tmp_path)
    old = tmp_path / "old.h5"
    with h5py.File(out, "r") as src, h5py.File(old, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["format_version"] = 1
        for name in src:
            if not h5py.h5ds.is_scale(src[name].id):
                dst.create_dataset(name, data=src[name][()])
        dst["done"][1, 2] = False
        dst.attrs["complete"] = False
    run = spectra.load(old)
    assert run.to_xarray()["singular_values"].dims == ("anchor", "time", "value")
    res = CliRunner().invoke(cli, ["estimate", "--out", str(old), "--n-samples", "3", "--n-times", "4",
                                   "--quiet", "--resume"])
    assert res.exit_code == 0, res.output
    again = spectra.load(old)
    assert again.complete and again.attrs["format_version"] == 1
    assert rel_err(again["singular_values"], spectra.load(out)["singular_values"]) < 1e-12


class EpsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(8, 8, generator=g, dtype=torch.float64) / 3)

    def forward(self, x, t):
        return torch.tanh(x @ self.w.T) * t[:, None]


def test_python_api_runs_an_nn_module_in_memory(tmp_path):
    """A bare module with its schedule and parameterization; its score Jacobian is
    -(d eps / dx) / sigma, checked against torch.autograd.functional.jacobian."""
    net = EpsNet()
    x0 = np.random.default_rng(0).standard_normal((2, 8))
    run = spectra.estimate(net, out=tmp_path / "mem.h5", schedule="ve", parameterization="eps",
                           data=x0, times=[0.2, 0.6], method="jvp")
    assert run.complete and run.attrs["model"] == "python:EpsNet"
    sched = Schedule("ve")
    for ti, t in enumerate([0.2, 0.6]):
        alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
        for n in range(2):
            x = torch.as_tensor(alpha * x0[n])
            tt = torch.tensor([t], dtype=torch.float64)
            jac = torch.autograd.functional.jacobian(lambda z, tt=tt: net(z[None], tt)[0], x) / -sigma
            exact = torch.linalg.svdvals(jac).numpy()
            assert rel_err(run["singular_values"][n, ti], exact) < 1e-10
    # the same module again resumes (checked by content); another module does not
    again = spectra.estimate(net, out=tmp_path / "mem.h5", schedule="ve", parameterization="eps",
                             data=x0, times=[0.2, 0.6], method="jvp", resume=True)
    assert again.complete
    other = EpsNet()
    with torch.no_grad():
        other.w.mul_(2)
    with pytest.raises(spectra.errors.SpectraError, match="model"):
        spectra.estimate(other, out=tmp_path / "mem.h5", schedule="ve", parameterization="eps",
                         data=x0, times=[0.2, 0.6], method="jvp", resume=True)


def test_python_api_takes_a_score_model_and_a_spec(tmp_path):
    model = linear_manifold(32, np.r_[np.ones(4), 0.1 * np.ones(4)], Schedule("ve"), seed=3)
    run = spectra.estimate(model, out=tmp_path / "a.h5", times=[0.5], n_samples=2, method="vjp")
    alpha, sigma = float(run["alpha"][0]), float(run["sigma"][0])
    exact = linear_manifold_singular_values(model.covariance_eigenvalues(), 32, alpha, sigma)
    assert rel_err(run["singular_values"][:, 0], exact[None]) < 1e-10
    demo = spectra.estimate(None, out=tmp_path / "demo.h5", n_samples=1, n_times=2)
    assert demo.complete and demo["singular_values"].shape == (1, 2, 100)
    with pytest.raises(spectra.errors.SpectraError, match="unknown option"):
        spectra.estimate(None, out=tmp_path / "x.h5", n_sample=1)
