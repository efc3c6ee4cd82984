"""`--device cuda`: the engine on a GPU against the closed form (skipped without CUDA)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli

import spectra
from spectra.jacobian import spectra_at
from spectra.models import demo_manifold_spec, linear_manifold, load_model
from spectra.schedules import Schedule
from spectra.theory.linear import linear_manifold_singular_values

pytestmark = pytest.mark.gpu
ASSETS = __import__("pathlib").Path(__file__).parent / "assets"


def _closed_form_error(path) -> float:
    traj = spectra.load(path)
    lam = load_model(demo_manifold_spec()).covariance_eigenvalues()
    worst = 0.0
    for ti, (a, s) in enumerate(zip(traj["alpha"], traj["sigma"], strict=True)):
        exact = linear_manifold_singular_values(lam, 100, a, s, traj.attrs["target"])
        worst = max(worst, rel_err(traj["singular_values"][:, ti], exact[None]))
    return worst


@pytest.mark.parametrize("method,tol", [("jvp", 1e-10), ("vjp", 1e-10), ("fd-central", 1e-6)])
def test_cli_cuda_float64_matches_closed_form(tmp_path, method, tol):
    out = tmp_path / "run.h5"
    res = CliRunner().invoke(cli, ["estimate", "--model", demo_manifold_spec(),
                                   "--out", str(out), "--device", "cuda", "--method", method,
                                   "--n-samples", "3", "--times", "0.3,0.5,0.8", "--quiet"])
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    assert traj.attrs["device"].startswith("cuda") and traj.attrs["method_used"] == method
    tf32 = traj.attrs["tf32"]
    tf32 = json.loads(tf32) if isinstance(tf32, str) else tf32
    assert not any(tf32.values())
    assert _closed_form_error(out) < tol


def test_float32_on_cuda_is_not_tf32():
    """With TF32 matmuls (10-bit mantissa) the denoiser values would be off by ~1e-3; in true
    float32 they hold to ~1e-5 of the closed form."""
    model = linear_manifold(256, np.r_[np.full(40, 1.0), np.full(40, 0.05)], Schedule("ve"), seed=1)
    model.to("cuda", torch.float32)
    x0 = torch.as_tensor(model.sample(2, np.random.default_rng(0)), dtype=torch.float32, device="cuda")
    from spectra.sweep.setup import disable_tf32

    disable_tf32()
    lam = model.covariance_eigenvalues()
    res = spectra_at(model, x0, 0.5, "denoiser", "jvp", batch_size=512)
    alpha, sigma = model.alpha_sigma(0.5)
    exact = linear_manifold_singular_values(lam, 256, alpha, sigma, "denoiser")[:80]
    assert rel_err(res.singular_values[:, :80], exact[None]) < 1e-4


@pytest.mark.parametrize("extra", [(), ("--compile",)])
def test_network_on_cuda_matches_autograd_jacobian_on_cpu(tmp_path, extra):
    """A real network on the GPU in float64, with eager and with compiled products: the stored
    singular values equal those of the Jacobian that torch.autograd.functional.jacobian computes
    for the same net on the CPU."""
    traj = _net_on_cuda(tmp_path, "tiny", 2, *extra)
    assert json.loads(traj.attrs["autodiff"])["compiled"] is bool(extra)
    net = _load_nets().tiny().double()
    t = torch.full((1,), 0.4, dtype=torch.float64)
    for n in range(2):
        x = torch.as_tensor(traj["x0"][n])
        jac = torch.autograd.functional.jacobian(lambda v: net(v[None], t)[0], x)
        sv = np.linalg.svd(jac.numpy(), compute_uv=False)
        assert rel_err(traj["singular_values"][n, 0], sv) < 1e-10


def test_topk_on_cuda_matches_closed_form(tmp_path):
    out = tmp_path / "tk.h5"
    res = CliRunner().invoke(cli, ["estimate", "--model", demo_manifold_spec(),
                                   "--out", str(out), "--device", "cuda", "--method", "topk",
                                   "--n-samples", "3", "--times", "0.3,0.5,0.8", "--quiet"])
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    lam = load_model(demo_manifold_spec()).covariance_eigenvalues()
    for ti, (a, s) in enumerate(zip(traj["alpha"], traj["sigma"], strict=True)):
        exact = linear_manifold_singular_values(lam, 100, a, s, "denoiser")[:16]
        assert rel_err(traj["singular_values"][:, ti], exact[None]) < 1e-10
    assert np.all(traj["residuals"] <= 1e-6 * traj["singular_values"])


def _net_on_cuda(tmp_path, factory: str, n_samples: int, *extra: str):
    """The run of `spectra estimate` on nets.py:factory (eps, ve) at noise anchors, t = 0.4,
    with `extra` options."""
    out = tmp_path / f"{factory}.h5"
    res = CliRunner().invoke(cli, ["estimate", "--model", f"{ASSETS / 'nets.py'}:{factory}",
                                   "--schedule", "ve", "--parameterization", "eps", "--data", "noise",
                                   "--n-samples", str(n_samples), "--times", "0.4", "--device", "cuda",
                                   "--target", "eps", "--out", str(out), "--quiet", *extra])
    assert res.exit_code == 0, res.output
    return spectra.load(out)


def _load_nets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets", ASSETS / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    return nets


def test_pair_bytes_count_the_hidden_tangents():
    """Forward mode keeps one tangent of the 2^20-unit hidden layer per pair (and the tanh's
    tangent beside it): the measured bytes per pair lie between one and eight such tangents."""
    from spectra.jacobian import AutodiffPath, make_operator
    from spectra.jacobian.memory import pair_bytes
    from spectra.models import NetworkScoreModel

    nets = _load_nets()
    model = NetworkScoreModel(nets.wide(), Schedule("ve"), "eps", shape=(16,))
    model.to(torch.device("cuda"), torch.float64)
    x = torch.randn(1, 16, dtype=torch.float64, device="cuda")
    op = make_operator(model, x, 0.4, "eps", AutodiffPath("jvp"), 8)
    hidden = nets.WIDE * 8
    assert hidden <= pair_bytes(op, ("matmat",)) <= 8 * hidden


def test_default_chunks_fit_measured_memory(tmp_path):
    """With the guess of 64 D values a pair, 300 anchors of this wide net would go in chunks of
    4096 pairs, whose hidden tangents alone take 32 GiB per layer; measured, a chunk's hidden
    tangents fit a quarter of the free memory and the run completes."""
    idle = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    free = torch.cuda.mem_get_info()[0] + idle
    traj = _net_on_cuda(tmp_path, "wide", 300)
    batch = int(traj.attrs["batch_size"])
    assert batch < 4096
    assert batch * _load_nets().WIDE * 8 <= free // 4
    assert traj.attrs["complete"]
