"""Where spectra meets the researcher's other tools: start-up without torch, labelled files in
xarray and pandas, the Python API on a model in memory, files of the previous format version."""

import json
import subprocess
import sys
from pathlib import Path

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


# --- the default grid ------------------------------------------------------------------------------
def test_default_grid_is_log_spaced_in_tau_and_resumes_keep_their_spacing(tmp_path):
    out = _demo_run(tmp_path)
    run = spectra.load(out)
    steps = np.diff(np.log(run["tau"]))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)  # ve: log tau is linear in t
    assert run["t"][0] == 0.01 and run["t"][-1] == 1.0
    (tmp_path / "t").mkdir()
    old = _demo_run(tmp_path / "t", "--spacing", "t")
    np.testing.assert_allclose(spectra.load(old)["t"], np.geomspace(0.01, 1.0, 4))
    # a file from before --spacing (its options lack it) resumes with its log-t grid
    with h5py.File(old, "r+") as f:
        options = json.loads(f.attrs["options"])
        del options["spacing"]
        f.attrs["options"] = json.dumps(options)
        f["done"][0, 1] = False
        f.attrs["complete"] = False
    res = CliRunner().invoke(cli, ["estimate", "--out", str(old), "--n-samples", "3", "--n-times", "4",
                                   "--quiet", "--resume"])
    assert res.exit_code == 0, res.output
    assert spectra.load(old).complete


@pytest.mark.parametrize("name", ["ve", "vp", "edm", "vp-sqrt", "ddpm"])
def test_tau_grid_inverts_tau(name):
    sched = Schedule(name)
    lo, hi = sched.default_range
    grid = sched.tau_grid(lo, hi, 25)
    assert grid[0] == lo and grid[-1] == hi and np.all(np.diff(grid) > 0)
    if name == "ddpm":
        assert np.all(grid == np.round(grid))
        return
    logs = np.log(sched.tau(grid))
    np.testing.assert_allclose(np.diff(logs), np.diff(logs)[0], rtol=1e-8)


# --- data files --------------------------------------------------------------------------------------
def test_npz_key_selects_an_array(tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, first=rng.standard_normal((3, 16)), second=rng.standard_normal((3, 16)))
    spec = str(Path(__file__).parent / "assets" / "nets.py") + ":tiny"
    args = ["estimate", "--model", spec, "--schedule", "ve", "--parameterization", "eps", "--n-samples",
            "2", "--times", "0.5", "--quiet", "--method", "jvp"]
    res = CliRunner().invoke(cli, [*args, "--data", f"{data}:second", "--out", str(tmp_path / "a.h5")])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(spectra.load(tmp_path / "a.h5")["x0"], np.load(data)["second"][:2])
    res = CliRunner().invoke(cli, [*args, "--data", str(data), "--out", str(tmp_path / "b.h5")])
    assert res.exit_code == 2 and f"{data}:NAME" in res.output
    res = CliRunner().invoke(cli, [*args, "--data", f"{data}:third", "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == 2 and "no array 'third'" in res.output and "first, second" in res.output


def test_uint8_images_for_a_model_of_unit_range_are_warned_of(tmp_path):
    from spectra.sweep.inputs import check_range

    with pytest.warns(UserWarning, match=r"\[0, 255\].*x / 127.5 - 1"):
        check_range(np.array([[0.0, 255.0]]), (-1.0, 1.0), "imgs.npy")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_range(np.array([[-1.5, 2.0]]), (-1.0, 1.0), "ok.npy")  # within a width: no warning
        check_range(np.array([[0.0, 255.0]]), None, "unknown.npy")


# --- models researchers already have -------------------------------------------------------------------
def _cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "spectra_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_diffusers_hub_id_resolves_through_the_offline_cache(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path / "model"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler().save_pretrained(folder / "scheduler")
    # the Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someorg--tiny-unet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    import shutil
    shutil.copytree(folder, repo / "snapshots" / commit)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf")}
    common = ["--data", "noise", "--n-samples", 1, "--times", "10,500", "--method", "jvp", "--quiet"]
    hub = _cli("estimate", "--model", "diffusers:someorg/tiny-unet", "--out", tmp_path / "hub.h5", *common,
               env=env)
    assert hub.returncode == 0, hub.stderr[-2000:]
    local = _cli("estimate", "--model", f"diffusers:{folder}", "--out", tmp_path / "local.h5", *common,
                 env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    np.testing.assert_array_equal(spectra.load(tmp_path / "hub.h5")["singular_values"],
                                  spectra.load(tmp_path / "local.h5")["singular_values"])
    missing = _cli("estimate", "--model", "diffusers:someorg/absent", "--out", tmp_path / "x.h5", *common,
                   env=env)
    assert missing.returncode == 2 and "local Hugging Face cache" in missing.stderr
    assert not (tmp_path / "x.h5").exists()


def test_edm_snapshot_pickle_needs_allow_pickle(tmp_path):
    import pickle

    assets = Path(__file__).parent / "assets"
    sys.path.insert(0, str(assets))
    try:
        import interfaces
    finally:
        sys.path.remove(str(assets))
    snapshot = tmp_path / "network-snapshot-000000.pkl"
    with snapshot.open("wb") as fh:  # EDM's layout: a dict whose 'ema' is the network
        pickle.dump({"ema": interfaces.EdmStyle(), "augment_pipe": None}, fh)
    env = {"PYTHONPATH": str(assets)}  # EDM's own modules importable, as the user would arrange
    common = ["--data", "noise", "--n-samples", 2, "--times", "0.05,0.5,5", "--target", "denoiser",
              "--dtype", "float32", "--quiet"]
    refused = _cli("estimate", "--model", f"edm:{snapshot}", "--out", tmp_path / "r.h5", *common, env=env)
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.h5").exists()
    loaded = _cli("estimate", "--model", f"edm:{snapshot}", "--allow-pickle", "--out", tmp_path / "p.h5",
                  *common, env=env)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    factory = _cli("estimate", "--model", f"edm:{assets / 'interfaces.py'}:edm_style", "--out",
                   tmp_path / "f.h5", *common, env=env)
    assert factory.returncode == 0, factory.stderr[-2000:]
    np.testing.assert_array_equal(spectra.load(tmp_path / "p.h5")["singular_values"],
                                  spectra.load(tmp_path / "f.h5")["singular_values"])
    no_edm = _cli("estimate", "--model", f"edm:{snapshot}", "--allow-pickle", "--out", tmp_path / "n.h5",
                  *common)
    assert no_edm.returncode == 2 and "no module named 'interfaces'" in no_edm.stderr


# --- figures --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_figures_in_every_format_hold_every_value(tmp_path, fmt):
    out = _demo_run(tmp_path)
    folder = tmp_path / "figs"
    res = CliRunner().invoke(cli, ["plot", str(out), "--out", str(folder), "--format", fmt, "--dpi", "80"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{n}.{fmt}" for n in ("gaps", "spectrum", "trajectories"))
    from spectra.plot import check_own_figure

    for path in folder.iterdir():
        check_own_figure(path)  # spectra may replace its own figures
    again = CliRunner().invoke(cli, ["plot", str(out), "--out", str(folder), "--format", fmt])
    assert again.exit_code == 0, again.output


def test_trajectories_figure_has_a_colorbar_and_no_clipping(tmp_path):
    from matplotlib.figure import Figure

    import spectra.plot as plot

    captured = {}
    real = plot.save

    def keep(fig: Figure, path, dpi=plot.DPI):
        captured[path.name] = fig
        return real(fig, path, dpi)

    tau = np.geomspace(1e-3, 1e2, 6)
    mu = np.linspace(0, 3.0, 6 * 5).reshape(6, 5)  # values up to 3: above the old clip at 1.05
    plot.save = keep
    try:
        plot.trajectories(tmp_path / "t.png", tau, -mu)
    finally:
        plot.save = real
    fig = captured["t.png"]
    main, bar = fig.axes[0], fig.axes[1]
    assert main.get_ylim()[1] >= 3.0
    assert "index" in bar.get_ylabel()
    legend = main.get_legend()
    box, frame = legend.get_window_extent(), main.get_window_extent()
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1  # the legend inside the axes


def test_demo_default_run_finds_the_intermediate_gap_where_theory_puts_it(tmp_path):
    """The shipped demo with every default (8 anchors, 20 times log-spaced in tau): the measured
    intermediate gap is widest within a factor 1.5 of the predicted tau_max = sqrt(a b)."""
    out = tmp_path / "run.h5"
    res = CliRunner().invoke(cli, ["estimate", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["compare-theory", str(out), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    phases = json.loads((tmp_path / "cmp" / "metrics.json").read_text())["phases"]
    predicted = {g["index"]: g for g in phases["predicted"]["intermediate_gaps"]}
    measured = {g["index"]: g for g in phases["measured"]["intermediate_gaps"]}
    assert 20 in predicted and 20 in measured, phases
    ratio = measured[20]["tau_max"] / predicted[20]["tau_max"]
    assert 1 / 1.5 <= ratio <= 1.5, ratio
