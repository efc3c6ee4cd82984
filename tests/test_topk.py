"""`--method topk`: matrix-free top-k singular values with residual certificates, against the
closed form (analytic models) and against dense SVDs (a random-weight U-Net)."""

import importlib.util
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli

import spectra
from spectra.jacobian import AutodiffJacobian, jacobian_at, topk_at, topk_svd
from spectra.models import NetworkScoreModel, demo_manifold_spec, linear_manifold
from spectra.schedules import Schedule

ASSETS = Path(__file__).parent / "assets"
D, VARIANCES = 64, np.r_[np.full(10, 1.0), np.full(10, 0.05)]


def _unet(size: int, width: int):
    spec = importlib.util.spec_from_file_location("unet", ASSETS / "unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.unet(size, width).double().eval()
    return NetworkScoreModel(net, Schedule("vp"), "eps", shape=(3, size, size))


@pytest.mark.parametrize("schedule,times", [("ve", [0.05, 0.4, 0.9]), ("ddpm", [3, 100, 700])])
def test_denoiser_top_k_equals_the_closed_form(schedule, times):
    model = linear_manifold(D, VARIANCES, Schedule(schedule), embedding="gaussian", seed=2)
    lam = model.covariance_eigenvalues()
    x0 = torch.as_tensor(model.sample(3, np.random.default_rng(0)))
    for t in times:
        alpha, sigma = model.alpha_sigma(t)
        tau = sigma**2 / alpha**2
        exact = np.sort(lam / (lam + tau) / alpha)[::-1][:8]  # theory.md 3.2, tangent values
        res = topk_at(model, alpha * x0, t, "denoiser", 8, tol=1e-10, block_size=8)
        assert res.converged.all()
        assert rel_err(res.singular_values, exact[None]) < 1e-10
        assert np.all(res.residuals <= 1e-10 * res.singular_values)
        assert np.all(res.n_jvp > 8) and np.all(res.n_vjp > 8)


def test_unet_top16_matches_dense_with_certificates():
    """Random weights (a flat top spectrum), D = 3x16x16, float64: every value within 1e-6 of the
    dense SVD, its certificate below 1e-6 of it, and the certificate bounds the true error."""
    model = _unet(16, 8)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha, _ = model.alpha_sigma(0.3)
    points = alpha * x
    dense = torch.linalg.svdvals(jacobian_at(model, points, 0.3, "denoiser", "jvp", batch_size=256))
    ref = dense[:, :16].numpy()
    res = topk_at(model, points, 0.3, "denoiser", 16, tol=1e-7, block_size=4)
    assert res.converged.all()
    assert rel_err(res.singular_values, ref) < 1e-6
    assert np.all(res.residuals < 1e-6 * res.singular_values)
    assert np.all(np.abs(res.singular_values - ref) <= res.residuals + 1e-12)
    products = res.n_jvp + res.n_vjp
    assert np.all(products < 2 * 768), products

    # a warm start from these vectors at a nearby time converges in fewer products
    alpha2, _ = model.alpha_sigma(0.32)
    start = torch.cat([res.right_vectors, torch.randn(2, 768, 16, dtype=torch.float64)], 2)[:, :, :16]
    warm = topk_at(model, alpha2 * x, 0.32, "denoiser", 16, tol=1e-7, block_size=16, start=start)
    cold = topk_at(model, alpha2 * x, 0.32, "denoiser", 16, tol=1e-7, block_size=16)
    assert np.all(warm.n_jvp + warm.n_vjp < cold.n_jvp + cold.n_vjp)
    assert rel_err(warm.singular_values, cold.singular_values) < 1e-6


def test_budget_exhaustion_is_reported_not_hidden():
    model = _unet(8, 8)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op = AutodiffJacobian(lambda z: model.target(z, 0.5, "denoiser"), x, 64)
    res = topk_svd(op, 8, tol=1e-12, block_size=4, max_products=40)
    assert not res.converged.any()
    assert np.all(res.residuals > 0) and np.isfinite(res.singular_values).all()
    assert res.n_jvp[0] + res.n_vjp[0] <= 40  # the budget counts every product
    short = topk_svd(op, 8, tol=1e-12, block_size=4, max_products=8)
    assert np.isnan(short.singular_values[0, 4:]).all() and np.isnan(short.residuals[0, 4:]).all()


DEMO_MANIFOLD = demo_manifold_spec()  # the analytic manifold of the demo network


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_topk_run_and_compare(tmp_path):
    out = tmp_path / "tk.h5"
    res = invoke("estimate", "--model", DEMO_MANIFOLD,
                 "--out", out, "--method", "topk", "--n-samples", 2, "--n-times", 5,
                 "--quiet")
    assert res.exit_code == 0, res.output
    run = spectra.load(out)
    assert run.attrs["target"] == "denoiser" and run.attrs["method_used"] == "topk"
    assert run["singular_values"].shape == (2, 5, 16) and run["residuals"].shape == (2, 5, 16)
    assert np.all(run["residuals"] <= 1e-6 * run["singular_values"])
    assert np.all(run["jvp_products"] >= 16) and np.all(run["vjp_products"] >= 16)  # k values need k
    assert np.isnan(run["sym_eigenvalues"]).all()
    info = invoke("info", out)
    assert info.exit_code == 0 and "max residual / value" in info.output
    res = invoke("compare-theory", out, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    metrics = __import__("json").loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert max(r["spectrum_distance"] for r in metrics["times"]) < 1e-8


@pytest.mark.parametrize("args,fragment", [
    (("--method", "topk", "--directions", "haar"), "--directions haar"),
    (("--method", "topk", "--tol", 2), "--tol"),
    (("--method", "topk", "--k", 500), "exceeds D = 100"),
])
def test_cli_topk_bad_options(tmp_path, args, fragment):
    res = invoke("estimate", "--out", tmp_path / "x.h5", "--n-samples", 1, "--n-times", 2, *args)
    assert res.exit_code == 2 and fragment in res.output, res.output
    assert not (tmp_path / "x.h5").exists()


def _topk_cmd(out, data, kill_at=None, *extra):
    env = {**os.environ, "SPECTRA_TEST_KILL_AT": str(kill_at or 0)}
    cmd = [sys.executable, "-m", "spectra_cli", "estimate", "--model", f"{ASSETS / 'nets.py'}:killer",
           "--schedule", "ve", "--parameterization", "eps", "--data", str(data), "--n-samples", "6",
           "--n-times", "5", "--at", "noisy", "--method", "topk", "--k", "4", "--batch-size", "8",
           "--out", str(out), "--quiet", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_topk_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """Warm starts chain the times of a chunk; a resumed chunk is replayed from its first time,
    so the values equal those of an uninterrupted run exactly."""
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((6, 16)))
    ref, killed = tmp_path / "ref.h5", tmp_path / "killed.h5"
    assert _topk_cmd(ref, data).returncode == 0
    crash = _topk_cmd(killed, data, 60)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    done = spectra.load(killed)["done"]
    assert 0 < done.sum() < done.size
    assert _topk_cmd(killed, data, None, "--resume").returncode == 0
    final, full = spectra.load(killed), spectra.load(ref)
    assert final.complete
    for name in ("singular_values", "residuals", "jvp_products", "vjp_products", "done"):
        np.testing.assert_array_equal(final[name], full[name], err_msg=name)


def test_k_above_the_rank_and_above_32(tmp_path):
    """k = 45 > rank 40 of the demo's denoiser Jacobian: the exact zeros converge (held to a
    floor of sqrt(eps) times the top value) and warm starts of k > 32 vectors work."""
    out = tmp_path / "k45.h5"
    res = invoke("estimate", "--model", DEMO_MANIFOLD,
                 "--out", out, "--method", "topk", "--k", 45, "--n-samples", 2,
                 "--n-times", 3, "--quiet")
    assert res.exit_code == 0, res.output
    run = spectra.load(out)
    assert np.all(run["singular_values"][:, :, 40:] < 1e-12 * run["singular_values"][:, :, :1])
    assert np.all(run["jvp_products"] + run["vjp_products"] <= 2 * 100 + 2 * 45)  # the budget


def test_float32_topk_uses_a_reachable_tolerance(tmp_path):
    out = tmp_path / "f32.h5"
    res = invoke("estimate", "--model", DEMO_MANIFOLD,
                 "--out", out, "--method", "topk", "--dtype", "float32", "--n-samples", 2,
                 "--n-times", 3, "--quiet")
    assert res.exit_code == 0, res.output
    run = spectra.load(out)
    tol = __import__("json").loads(run.attrs["tolerances"])["effective_tol"]
    assert tol == pytest.approx(100 * np.finfo(np.float32).eps)
    # certificates are honest in float32: where the values are ~1e-3 of the model's scale (the
    # largest t), round-off of the products limits them to ~1e-4 of the value
    assert np.all(run["residuals"] <= 1e-3 * run["singular_values"])


def test_demo_topk_converges_everywhere_and_equals_the_dense_svd(tmp_path):
    """The shipped demo network (D = 100, clustered tangent values): every one of the default
    run's 160 top-k Jacobians converges (no warning), each certificate holds, and the values
    equal the dense SVD of forward-mode Jacobians at the same points within 1e-8."""
    topk, dense = tmp_path / "topk.h5", tmp_path / "dense.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = invoke("estimate", "--out", topk, "--method", "topk", "--quiet")
    assert res.exit_code == 0, res.output
    res = invoke("estimate", "--out", dense, "--method", "jvp", "--target", "denoiser", "--quiet")
    assert res.exit_code == 0, res.output
    run, ref = spectra.load(topk), spectra.load(dense)
    assert run["singular_values"].shape == (8, 20, 16)
    np.testing.assert_array_equal(run["x0"], ref["x0"])
    exact = ref["singular_values"][:, :, :16]
    assert np.max(np.abs(run["singular_values"] - exact) / exact) < 1e-8
    assert np.all(np.abs(run["singular_values"] - exact) <= run["residuals"] + 1e-12)


@pytest.mark.parametrize("max_basis,block", [(12, 2), (20, 3), (59, 2), (58, 1)])
def test_restarted_topk_equals_numpy_svd(max_basis, block):
    """Thick restarts within a bounded basis (and a basis within a block of D, which runs
    unrestarted) find the top values of a known matrix: within 1e-10 of numpy's SVD, each
    certificate below tol times its value and bounding the true error."""
    rng = np.random.default_rng(3)
    d, k = 60, 6
    q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    values = np.r_[np.geomspace(10, 2, 12), np.geomspace(1, 1e-3, d - 12)]
    a = torch.as_tensor(q1 @ np.diag(values) @ q2.T)
    points = torch.zeros(2, d, dtype=torch.float64)
    op = AutodiffJacobian(lambda x: x @ a.T, points, 64)
    res = topk_svd(op, k, tol=1e-12, block_size=block, max_basis=max_basis,
                   generator=torch.Generator().manual_seed(0))
    assert res.converged.all()
    assert np.max(np.abs(res.singular_values - values[:k]) / values[:k]) < 1e-10
    assert np.all(res.residuals <= 1e-12 * res.singular_values)
    assert np.all(np.abs(res.singular_values - values[:k]) <= res.residuals + 1e-13)
    if max_basis <= 20:  # unrestarted, it needs a basis of about 20 here
        assert np.all(res.restarts > 0)
    elif max_basis > d - block:  # within a block of D: never restarted
        assert np.all(res.restarts == 0)
