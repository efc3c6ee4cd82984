"""The mixture network (`spectra train --network mixture`, spectra.models.lowrank): with its
parameters set to MoLRG's, it is MoLRG's exact denoiser (against the analytic model's closed
form), and it trains, resumes and loads."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

from spectra.models.lowrank import LowRankMixture
from spectra.models.specs import load_model
from spectra.models.trained import c_in, c_noise

MOLRG = """kind = "gmm"
preset = "molrg"
ambient_dim = 20
n_classes = 3
subspace_dim = 2
delta = 0.3
seed = 1
[schedule]
name = "{schedule}"
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def molrg_as_network(model, variance: float) -> LowRankMixture:
    """The network whose component l has factors U_l (scale 1) and the other classes' U_j (scale
    delta): C_l = U_l U_l^T + delta^2 sum_(j != l) U_j U_j^T, no floor, zero means, equal weights."""
    k, dim, r = model.bases.shape
    net = LowRankMixture(dim, k, r, variance).double()
    with torch.no_grad():
        net.factors.copy_(torch.as_tensor(model.bases * np.sqrt(model.eigenvalues)[:, None, :]))
        net.log_floor.fill_(-np.inf)
    return net


@pytest.mark.parametrize("schedule", ["ve", "vp"])
def test_network_with_molrg_parameters_is_the_exact_denoiser(tmp_path, schedule):
    spec = tmp_path / "molrg.toml"
    spec.write_text(MOLRG.format(schedule=schedule))
    model = load_model(str(spec))
    variance = 0.7
    net = molrg_as_network(model, variance)
    rng = np.random.default_rng(0)
    x0 = model.sample(64, rng)
    for t in (0.05, 0.3, 0.7):
        alpha, sigma = model.alpha_sigma(t)
        x = torch.as_tensor(alpha * x0 + sigma * rng.standard_normal(x0.shape))
        a, s = torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
        eps = net(x * c_in(a, s, variance), c_noise(a, s).expand(len(x)))
        exact = model.target(x, t, "eps")
        assert torch.max(torch.abs(eps - exact)) / torch.max(torch.abs(exact)) < 1e-10, t


def test_training_lowers_the_loss_and_resumes(tmp_path):
    """A short training on fresh MoLRG samples lowers the denoising loss, and the checkpoint
    loads as a model (its own build, by class name) whose eps prediction is finite. (Learning
    the class subspaces takes thousands of steps: docs/representation.md measures it.)"""
    spec = tmp_path / "molrg.toml"
    spec.write_text(MOLRG.format(schedule="ve"))
    ck = tmp_path / "ck.pt"
    args = ["train", "--data", str(spec), "--out", str(ck), "--network", "mixture", "--depth", "3",
            "--width", "2", "--lr", "0.01", "--quiet"]
    res = CliRunner().invoke(cli, [*args, "--steps", "300"])
    assert res.exit_code == 0, res.output
    losses = torch.load(ck, weights_only=True)["losses"]
    assert losses[-1] < 0.5 * losses[0]
    res = CliRunner().invoke(cli, [*args, "--steps", "400", "--resume"])
    assert res.exit_code == 0, res.output
    trained = load_model(str(ck))
    assert isinstance(trained.module, LowRankMixture) and trained.module.factors.shape == (3, 20, 2)
    x = torch.as_tensor(load_model(str(spec)).sample(8, np.random.default_rng(0)))
    assert torch.isfinite(trained.target(x, 0.5, "eps")).all()


def test_mixture_network_needs_components(tmp_path):
    spec = tmp_path / "molrg.toml"
    spec.write_text(MOLRG.format(schedule="ve"))
    res = CliRunner().invoke(cli, ["train", "--data", str(spec), "--out", str(tmp_path / "ck.pt"),
                                   "--network", "mixture", "--depth", "0", "--steps", "5"])
    assert res.exit_code == 2
    assert "--depth >= 1" in res.output
