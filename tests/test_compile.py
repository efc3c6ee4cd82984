"""--compile: forward-mode products through torch.compile, checked against the closed form.

The model is the score network W2 tanh(W1 x) of tests/assets/interfaces.py. Under the ve schedule
(alpha = 1) its denoiser x + sigma^2 s(x) has the Jacobian I + sigma^2 W2 diag(1 - tanh^2(W1 x)) W1
(theory.md 2), so every time enters the compiled graph through sigma. One graph must serve every
time: t reaches it as data (ScoreModel.time_inputs), not as a constant.
"""

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli
from torch._dynamo.utils import counters

import spectra
from spectra.jacobian import AutodiffJacobian, operators
from spectra.jacobian.operators import CompileFallbackWarning, close_leaked_dual_level, dual_level_open

ASSETS = Path(__file__).parent / "assets"
SPEC = ASSETS / "interfaces.py"
sys.path.insert(0, str(ASSETS))
import interfaces  # noqa: E402

TIMES = (0.3, 0.6, 0.9)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def estimate(out, factory, *extra):
    return run("estimate", "--model", f"{SPEC}:{factory}", "--schedule", "ve", "--parameterization",
               "score", "--data", "noise", "--n-samples", 2, "--times", ",".join(map(str, TIMES)),
               "--target", "denoiser", "--out", out, "--quiet", *extra)


def check_closed_form(traj, tol, k=None):
    """The stored singular values (the k largest, if given) against the closed form."""
    for n, x in enumerate(traj["x0"]):
        for ti, sigma in enumerate(traj["sigma"]):
            jac = np.eye(interfaces.D) + sigma**2 * interfaces.tanh_jacobian(x)
            exact = np.linalg.svd(jac, compute_uv=False)[:k]
            assert rel_err(traj["singular_values"][n, ti], exact) < tol


@pytest.mark.filterwarnings("error::spectra.jacobian.operators.CompileFallbackWarning")
def test_compiled_jvp_matches_the_closed_form_with_one_graph_for_every_time(tmp_path):
    before = counters["stats"]["unique_graphs"]
    res = estimate(tmp_path / "run.h5", "tanh_plain", "--compile")
    assert res.exit_code == 0, res.output
    graphs = counters["stats"]["unique_graphs"] - before
    traj = spectra.load(tmp_path / "run.h5")
    path = json.loads(traj.attrs["autodiff"])
    assert path["compiled"] is True and path["tried"] == [] and traj.attrs["method_used"] == "jvp"
    check_closed_form(traj, 1e-10)
    # the probe's one vector and the sweep's 16; a graph per time would make 4 or more
    assert 1 <= graphs <= 2
    assert "torch.func (compiled), context forward-ad-safe" in run("info", tmp_path / "run.h5").output


@pytest.mark.filterwarnings("error::spectra.jacobian.operators.CompileFallbackWarning")
def test_topk_takes_its_jvps_compiled(tmp_path):
    res = estimate(tmp_path / "run.h5", "tanh_plain", "--compile", "--method", "topk", "--k", 4)
    assert res.exit_code == 0, res.output
    traj = spectra.load(tmp_path / "run.h5")
    assert json.loads(traj.attrs["autodiff"])["compiled"] is True
    check_closed_form(traj, 1e-8, k=4)


def test_a_model_that_cannot_compile_runs_eager_and_says_why(tmp_path):
    res = estimate(tmp_path / "run.h5", "tanh_graph_break", "--compile")
    assert res.exit_code == 0, res.output
    traj = spectra.load(tmp_path / "run.h5")
    path = json.loads(traj.attrs["autodiff"])
    assert path["compiled"] is False and path["engine"] == "torch.func"
    assert [(p["compiled"], p["context"]) for p in path["tried"]] == [(True, "forward-ad-safe")]
    check_closed_form(traj, 1e-10)


def test_compile_applies_to_forward_mode_products_of_networks(tmp_path):
    for extra, message in [(("--method", "fd-central"), "--compile compiles forward-mode products"),
                           (("--method", "vjp"), "not vjp")]:
        res = estimate(tmp_path / "x.h5", "tanh_plain", "--compile", *extra)
        assert res.exit_code == 2 and message in res.output
        assert len(res.output.strip().splitlines()) == 1
    res = run("estimate", "--model", "data/demo.toml", "--compile", "--n-samples", 1,
              "--n-times", 1, "--out", tmp_path / "x.h5", "--quiet")
    assert res.exit_code == 2 and "--compile applies to network models" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_a_run_from_before_the_option_resumes_and_refuses_a_change(tmp_path):
    out = tmp_path / "run.h5"
    assert estimate(out, "tanh_plain").exit_code == 0
    with h5py.File(out, "r+") as f:  # as written before --compile existed
        options = json.loads(f.attrs["options"])
        del options["compile"]
        f.attrs["options"] = json.dumps(options)
    assert estimate(out, "tanh_plain", "--resume").exit_code == 0
    res = estimate(out, "tanh_plain", "--resume", "--compile")
    assert res.exit_code == 2 and "compile (False in the file, True now)" in res.output


@pytest.mark.filterwarnings("error::spectra.jacobian.operators.CompileFallbackWarning")
def test_compiled_products_of_a_trained_checkpoint_equal_eager_ones(tmp_path):
    """The shipped demo network (`spectra train`: eps through an input scaling, so its module is
    not called with the bare time) gives the eager values to rounding when compiled."""
    runs = {}
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        out = tmp_path / f"{name}.h5"
        res = run("estimate", "--n-samples", 2, "--times", "0.05,0.5", "--out", out, "--quiet", *extra)
        assert res.exit_code == 0, res.output
        runs[name] = spectra.load(out)
    assert json.loads(runs["compiled"].attrs["autodiff"])["compiled"] is True
    assert rel_err(runs["compiled"]["singular_values"], runs["eager"]["singular_values"]) < 1e-10
    assert rel_err(runs["compiled"]["sym_eigenvalues"], runs["eager"]["sym_eigenvalues"]) < 1e-10


def _breaks_compile(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    torch._dynamo.graph_break()
    return scale * torch.tanh(x)


def test_a_compile_failure_after_the_probe_warns_and_takes_eager_products():
    """J = scale diag(1 - tanh^2(x)) from eager products, with a warning (the probe turns that
    warning into an error: test_a_model_that_cannot_compile_runs_eager_and_says_why)."""
    x = torch.randn(3, 5, dtype=torch.float64)
    scale = torch.tensor(0.7, dtype=torch.float64)
    op = AutodiffJacobian(_breaks_compile, x, 64, (scale,), compiled=True)
    eye = torch.eye(5, dtype=torch.float64).expand(3, 5, 5)
    with pytest.warns(CompileFallbackWarning):
        jac = op.matmat(eye)
    exact = torch.diag_embed(scale * (1 - torch.tanh(x) ** 2))
    assert torch.allclose(jac, exact, rtol=1e-14, atol=0)
    assert op.compiled is False


@pytest.mark.filterwarnings("error::spectra.jacobian.operators.CompileFallbackWarning")
def test_attention_and_group_norm_compile_in_the_forward_ad_safe_context(tmp_path):
    """torch's fused attention and its forward-mode group_norm do not compile under vmap(jvp);
    math attention and group_norm by definition do. Reference: torch.autograd.functional."""
    out = tmp_path / "run.h5"
    res = run("estimate", "--model", f"{SPEC}:attention", "--schedule", "ve", "--parameterization",
              "score", "--data", "noise", "--n-samples", 2, "--times", "0.3,0.7", "--compile",
              "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    path = json.loads(traj.attrs["autodiff"])
    assert path["compiled"] is True and path["context"] == "forward-ad-safe" and path["tried"] == []
    for n, x in enumerate(traj["x0"]):
        exact = interfaces.attention_singular_values(x)
        for ti in range(2):  # the model ignores t; ve at clean anchors: alpha = 1
            # GroupNorm makes J rank-deficient: errors relative to the largest value
            assert np.abs(traj["singular_values"][n, ti] - exact).max() / exact[0] < 1e-12


def test_a_leaked_dual_level_is_closed():
    """What a failed compile of forward mode can leave behind: an open C++ dual level, after
    which every jvp fails."""
    def jvp_of_square():
        return torch.func.jvp(lambda y: y**2, (torch.full((2,), 3.0),), (torch.ones(2),))[1]

    assert not dual_level_open()
    torch._C._enter_dual_level()
    assert dual_level_open()
    with pytest.raises(RuntimeError, match="Nested forward mode AD"):
        jvp_of_square()
    close_leaked_dual_level()
    assert not dual_level_open()
    assert torch.equal(jvp_of_square(), torch.full((2,), 6.0))
    close_leaked_dual_level()  # nothing open: a no-op
    assert torch.equal(jvp_of_square(), torch.full((2,), 6.0))


def test_a_fallback_during_the_sweep_is_recorded(tmp_path, monkeypatch):
    """With room for one graph, the probe's (one vector) compiles and the sweep's (16 vectors)
    hits torch's limit: eager products finish the run, equal to the closed form, and the file's
    `autodiff` says so."""
    torch._dynamo.reset()
    monkeypatch.setattr(operators, "GRAPH_LIMIT", 1)
    res = estimate(tmp_path / "run.h5", "tanh_plain", "--compile")
    assert res.exit_code == 0, res.output
    traj = spectra.load(tmp_path / "run.h5")
    path = json.loads(traj.attrs["autodiff"])
    assert path["compiled"] is True and "FailOnRecompileLimitHit" in path["fallback"]
    check_closed_form(traj, 1e-10)


@pytest.mark.filterwarnings("error::spectra.jacobian.operators.CompileFallbackWarning")
def test_a_group_norm_unet_compiles(tmp_path):
    """A DDPM-style U-Net (GroupNorm, SiLU, time embedding, skip connections): compiled J of its
    eps output against torch.autograd.functional.jacobian of the bare network."""
    out = tmp_path / "run.h5"
    res = run("estimate", "--model", f"{ASSETS / 'unet.py'}:unet", "--schedule", "ve",
              "--parameterization", "eps", "--target", "eps", "--data", "noise", "--shape", "3,8,8",
              "--n-samples", 1, "--times", "0.4", "--compile", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    assert json.loads(traj.attrs["autodiff"])["compiled"] is True
    import unet

    net = unet.unet().double().eval()
    x = torch.as_tensor(traj["x0"][0])
    t = torch.full((1,), 0.4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: net(z[None], t)[0], x).reshape(192, 192)
    exact = torch.linalg.svdvals(jac).numpy()
    assert np.abs(traj["singular_values"][0, 0] - exact).max() / exact[0] < 1e-12
