"""Forward-AD safety: models torch.func cannot transform as they are still get exact spectra.

* F.scaled_dot_product_attention + GroupNorm: forward mode fails on the CPU fused kernel, so
  jvp runs inside safety.forward_ad_safe (math attention, group_norm by definition);
* an autograd.Function with only a backward rule (no jvp, no vmap rule) and an old-style one:
  reverse mode on a torch.autograd engine; top-k takes J v by double backward;
* an autograd.Function whose forward mode is slow: `auto` times every path and takes reverse mode;
* a model computed in numpy (no autodiff at all): central differences.
Each run records the path it took and the failures before it; values are checked against
references that do not use spectra (torch.autograd.functional.jacobian, or the closed form).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import rel_err
from spectra_cli.main import cli

import spectra
from spectra.jacobian.safety import forward_ad_safe, group_norm_by_definition

ASSETS = Path(__file__).parent / "assets"
SPEC = ASSETS / "interfaces.py"
sys.path.insert(0, str(ASSETS))
import interfaces  # noqa: E402


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def estimate(tmp_path, factory, *extra, name="run.h5"):
    out = tmp_path / name
    res = run("estimate", "--model", f"{SPEC}:{factory}", "--schedule", "ve", "--parameterization",
              "score", "--data", "noise", "--n-samples", 2, "--times", "0.3,0.7", "--out", out,
              "--quiet", *extra)
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    return traj, json.loads(traj.attrs["autodiff"])


def tanh_reference(traj):
    """Singular values of the closed-form Jacobian W2 diag(1 - tanh^2(W1 x)) W1 at each point."""
    return [np.linalg.svd(interfaces.tanh_jacobian(x), compute_uv=False) for x in traj["x0"]]


def test_attention_model_runs_jvp_in_the_safe_context(tmp_path):
    traj, path = estimate(tmp_path, "attention", "--method", "jvp")
    assert traj.attrs["method_used"] == "jvp"
    assert path["engine"] == "torch.func" and path["context"] == "forward-ad-safe"
    assert "scaled_dot_product" in path["tried"][0]["error"]
    for n, x in enumerate(traj["x0"]):
        exact = interfaces.attention_singular_values(x)
        for ti in range(2):  # the model ignores t; ve at clean anchors: alpha = 1
            # GroupNorm makes J rank-deficient: errors relative to the largest value
            err = np.abs(traj["singular_values"][n, ti] - exact).max() / exact[0]
            assert err < 1e-12


def test_safe_context_restores_torch_and_keeps_group_norm():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    w, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    native = torch.nn.functional.group_norm
    expected = native(x, 2, w, b, 1e-5)
    with forward_ad_safe():
        assert torch.nn.functional.group_norm is group_norm_by_definition
        inside = torch.nn.GroupNorm(2, 4).double()(x)
    assert torch.nn.functional.group_norm is native
    assert torch.allclose(inside, native(x, 2), atol=1e-13)
    assert torch.allclose(group_norm_by_definition(x, 2, w, b, 1e-5), expected, atol=1e-13)


@pytest.mark.parametrize("factory", ["tanh_no_jvp", "tanh_old_style"])
def test_custom_autograd_function_falls_back_to_batched_reverse_mode(tmp_path, factory):
    traj, path = estimate(tmp_path, factory)
    assert traj.attrs["method_used"] == "vjp"
    assert path["engine"].startswith("torch.autograd") and path["context"] == "default"
    assert [p["method"] for p in path["tried"]][:2] == ["jvp", "jvp"]
    timed = path["timings"]["paths"]  # both torch.autograd engines ran and were timed
    assert set(timed) == {"vjp/torch.autograd/default", "vjp/torch.autograd-rows/default"}
    assert timed[f"vjp/{path['engine']}/default"] == min(timed.values())
    for n, exact in enumerate(tanh_reference(traj)):
        for ti in range(2):
            assert rel_err(traj["singular_values"][n, ti], exact) < 1e-10


def test_topk_on_a_model_without_forward_mode_uses_double_backward(tmp_path):
    traj, path = estimate(tmp_path, "tanh_no_jvp", "--method", "topk", "--k", 4, "--target", "score")
    assert traj.attrs["method_used"] == "topk" and path["engine"] == "torch.autograd"
    for n, exact in enumerate(tanh_reference(traj)):
        for ti in range(2):
            assert rel_err(traj["singular_values"][n, ti], exact[:4]) < 1e-8
            assert np.all(traj["residuals"][n, ti] < 1e-6 * exact[:4])


def test_model_without_autodiff_falls_back_to_finite_differences(tmp_path):
    traj, path = estimate(tmp_path, "tanh_numpy")
    assert traj.attrs["method_used"] == "fd-central" and path["engine"] == "none"
    assert len(path["tried"]) == 7  # 2 forward-mode + 5 reverse-mode paths
    for n, exact in enumerate(tanh_reference(traj)):
        assert rel_err(traj["singular_values"][n, 0], exact) < 1e-7


def test_explicit_method_that_cannot_run_is_one_line_exit_2(tmp_path):
    res = run("estimate", "--model", f"{SPEC}:tanh_no_jvp", "--schedule", "ve", "--parameterization",
              "score", "--data", "noise", "--method", "jvp", "--out", tmp_path / "x.h5", "--quiet")
    assert res.exit_code == 2
    assert "method jvp cannot differentiate this model" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_info_reports_the_path(tmp_path):
    estimate(tmp_path, "attention", "--method", "jvp")
    res = run("info", tmp_path / "run.h5")
    assert res.exit_code == 0 and "autodiff    torch.func, context forward-ad-safe" in res.output
    estimate(tmp_path, "tanh_slow_jvp", name="auto.h5")
    res = run("info", tmp_path / "auto.h5")
    measured = next(line for line in res.output.splitlines() if "measured" in line)
    assert measured.index("vjp/") < measured.index("jvp/torch.func/default")  # fastest first


def test_jacobian_at_runs_the_method_it_is_given():
    """A recorded path supplies the engine and context; the method named takes precedence, so
    fd-central on a jvp path is finite differences (round-off ~1e-10 from the closed form of
    this linear score, not exact)."""
    from spectra.jacobian import AutodiffPath, jacobian_at
    from spectra.models import demo_manifold_spec, load_model

    model = load_model(demo_manifold_spec())
    x = torch.as_tensor(model.sample(1, np.random.default_rng(0)))
    exact = jacobian_at(model, x, 0.5, "score", "jvp")
    fd = jacobian_at(model, x, 0.5, "score", "fd-central", path=AutodiffPath("jvp"))
    err = float((fd - exact).abs().max() / exact.abs().max())
    assert 0 < err < 1e-6


def test_auto_takes_the_path_it_measured_fastest(tmp_path):
    """Forward mode costs 20 ms a call more than reverse mode here: auto times every path that
    runs, records the timings and takes reverse mode; the values are the closed form's."""
    traj, path = estimate(tmp_path, "tanh_slow_jvp")
    timed = path["timings"]["paths"]
    assert "jvp/torch.func/default" in timed and len(timed) >= 3
    assert traj.attrs["method_used"] == "vjp"
    assert timed[path_label(path)] == min(timed.values())
    assert timed["jvp/torch.func/default"] > 5 * timed[path_label(path)]
    chunk = path["timings"]["chunk"]["seconds_per_product"]
    assert str(traj.attrs["batch_size"]) in chunk  # the chunk size is one it timed
    for n, exact in enumerate(tanh_reference(traj)):
        for ti in range(2):
            assert rel_err(traj["singular_values"][n, ti], exact) < 1e-10
    forced = estimate(tmp_path, "tanh_slow_jvp", "--method", "jvp", name="jvp.h5")[0]
    assert forced.attrs["method_used"] == "jvp"  # an explicit method wins


def path_label(path):
    return "/".join([path["method"], path["engine"], path["context"]])
