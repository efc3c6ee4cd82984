"""`spectra train`: small score networks on synthetic data, self-describing checkpoints."""

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.checkpoint import read_checkpoint
from spectra.models.specs import load_trained
from spectra.models.trained import ResidualMLP
from spectra.train import TrainOptions, train

TINY = """kind = "gaussian"
ambient_dim = 8
variance_groups = [[1.0, 2], [0.1, 1]]
embedding = "orthonormal"
seed = 1
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def trained(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "ck.pt"
    res = run("train", "--data", spec, "--out", out, "--steps", 300, "--width", 32, "--quiet")
    assert res.exit_code == 0, res.output
    return out


def test_loss_falls(trained):
    losses = read_checkpoint(trained)["losses"].numpy()
    assert len(losses) == 6  # one mean per 50 steps
    assert losses[-1] < 0.6 * losses[0], losses


def test_checkpoint_is_self_describing_and_analysed_with_ema_weights(trained, spec):
    ck = torch.load(trained, weights_only=True)
    config = json.loads(ck["config"])
    assert config["data_spec"]["ambient_dim"] == 8 and config["schedule"]["name"] == "ve"
    assert config["parameterization"] == "eps" and config["options"]["steps"] == 300
    model = load_trained(trained)
    state = model.module.state_dict()
    for name, value in ck["ema"].items():
        assert torch.equal(state[name], value.to(state[name].dtype))
    assert any(not torch.equal(ck["ema"][n], ck["model"][n]) for n in ck["ema"])
    # the prediction is the EMA network through c_in = 1/sqrt(alpha^2 v + sigma^2),
    # c_noise = log(sigma/alpha)/4 (ve: alpha = 1, sigma = 0.01 * 5000^t)
    net = ResidualMLP(8, 32, 2).double()
    net.load_state_dict(ck["ema"])
    x = torch.randn(3, 8, dtype=torch.float64)
    sigma = 0.01 * 5000**0.4
    expected = net(x / np.sqrt(config["data_variance"] + sigma**2),
                   torch.full((3,), np.log(sigma) / 4, dtype=torch.float64))
    model.to("cpu", torch.float64)
    assert torch.allclose(model.predict(x, 0.4), expected, rtol=1e-10, atol=1e-12)


def test_resumed_training_continues_from_its_step(spec, tmp_path):
    opts = dict(data=str(spec), width=16, checkpoint_every=50)
    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    train(whole, TrainOptions(steps=200, **opts), progress=False)
    train(part, TrainOptions(steps=100, **opts), progress=False)
    assert int(read_checkpoint(part)["step"]) == 100
    res = run("train", "--data", spec, "--out", part, "--steps", 200, "--width", 16,
              "--checkpoint-every", 50, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    a, b = read_checkpoint(whole), read_checkpoint(part)
    assert int(b["step"]) == 200
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    np.testing.assert_array_equal(a["losses"].numpy(), b["losses"].numpy())
    res = run("train", "--data", spec, "--out", part, "--steps", 300, "--width", 32, "--resume", "--quiet")
    assert res.exit_code == 2 and "options differ (width)" in res.output
    other = tmp_path / "other.toml"  # a different manifold is refused, the same spec elsewhere is not
    other.write_text(TINY.replace("seed = 1", "seed = 2"))
    res = run("train", "--data", other, "--out", part, "--steps", 300, "--width", 16, "--resume", "--quiet")
    assert res.exit_code == 2 and "options differ (data spec)" in res.output
    other.write_text(TINY)
    res = run("train", "--data", other, "--out", part, "--steps", 250, "--width", 16,
              "--checkpoint-every", 50, "--resume", "--quiet")
    assert res.exit_code == 0 and int(read_checkpoint(part)["step"]) == 250


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_corrupted_and_foreign_checkpoints_are_refused(tmp_path, trained):
    bad = {
        "garbage.pt": b"\x00not a checkpoint at all",
        "truncated.pt": trained.read_bytes()[:200],
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "spectra-checkpoint", "x": Evil()}))
    for name in ("garbage.pt", "truncated.pt", "foreign.pt", "evil.pt"):
        res = run("estimate", "--model", tmp_path / name, "--out", tmp_path / "r.h5", "--quiet")
        assert res.exit_code == 2, (name, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "unpickled!" not in res.output
        assert "checkpoint" in res.output
    res = run("train", "--data", TINY, "--out", tmp_path / "foreign.pt", "--overwrite", "--quiet")
    assert res.exit_code == 2
    missing = tmp_path / "missing.toml"
    res = run("train", "--data", missing, "--out", tmp_path / "new.pt", "--quiet")
    assert res.exit_code == 2 and res.output.strip() == f"error: data spec not found: {missing}"


def test_trained_run_compares_with_the_theory_of_its_data(trained, tmp_path):
    out = tmp_path / "run.h5"
    res = run("estimate", "--model", trained, "--out", out, "--n-samples", 2, "--n-times", 4, "--quiet")
    assert res.exit_code == 0, res.output
    config = json.loads(spectra.load(out).attrs["model_config"])
    assert config["kind"] == "trained" and config["interface"] == "spectra-train"
    res = run("compare-theory", out, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert metrics["theory"]["source"] == "run" and metrics["theory"]["m"] == 3


def test_n_train_points_are_stored(spec, tmp_path):
    out = tmp_path / "mem.pt"
    train(out, TrainOptions(data=str(spec), steps=50, n_train=5, width=16), progress=False)
    ck = read_checkpoint(out)
    assert ck["train_points"].shape == (5, 8)
    assert load_trained(out).config()["train"]["n_train_points"] == 5


def test_slim_checkpoint_is_analysable_but_not_resumable(spec, tmp_path):
    full, slim = tmp_path / "full.pt", tmp_path / "slim.pt"
    train(full, TrainOptions(data=str(spec), steps=60, width=16), progress=False)
    res = run("train", "--data", spec, "--out", slim, "--steps", 60, "--width", 16, "--slim", "--quiet")
    assert res.exit_code == 0, res.output
    a, b = read_checkpoint(full), read_checkpoint(slim)
    assert "model" not in b and "optimizer" not in b and int(b["step"]) == 60
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name])
    assert slim.stat().st_size < 0.5 * full.stat().st_size
    x = torch.randn(4, 8, dtype=torch.float64)
    ma, mb = load_trained(full), load_trained(slim)
    assert torch.equal(ma.predict(x, 0.3), mb.predict(x, 0.3))
    before = slim.read_bytes()
    res = run("train", "--data", spec, "--out", slim, "--steps", 100, "--width", 16, "--resume", "--quiet")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "--slim" in res.output
    assert slim.read_bytes() == before
    # --slim on a resume that has nothing left to train still slims the final checkpoint
    res = run("train", "--data", spec, "--out", full, "--steps", 60, "--width", 16, "--resume", "--slim",
              "--quiet")
    assert res.exit_code == 0 and "model" not in read_checkpoint(full)


def test_checkpoint_and_its_spec_move_together(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "tiny.toml").write_text(TINY)
    train(folder / "ck.pt", TrainOptions(data=str(folder / "tiny.toml"), steps=20, width=8), progress=False)
    assert json.loads(read_checkpoint(folder / "ck.pt")["config"])["data_spec_file"] == "tiny.toml"
    moved = folder.rename(tmp_path / "b")
    model = load_trained(moved / "ck.pt")
    assert model.data.config()["spec_file"] == str((moved / "tiny.toml").resolve())


def test_memorizing_checkpoint_gives_its_training_points_as_anchors(spec, tmp_path):
    mem, fresh = tmp_path / "mem.pt", tmp_path / "fresh.pt"
    train(mem, TrainOptions(data=str(spec), steps=20, n_train=5, width=8), progress=False)
    train(fresh, TrainOptions(data=str(spec), steps=20, width=8), progress=False)
    points = read_checkpoint(mem)["train_points"].numpy()
    model = load_trained(mem)
    np.testing.assert_array_equal(model.sample(3, np.random.default_rng(1)), points[:3])
    np.testing.assert_array_equal(model.sample(12, np.random.default_rng(2)), points)  # all, once
    for data in (None, mem):  # the model's own data and --data CK.pt both anchor at the points
        out = tmp_path / f"run{data is None}.h5"
        args = ["estimate", "--model", mem, "--out", out, "--n-times", 2, "--quiet"]
        res = run(*args, *(["--data", data] if data else []))
        assert res.exit_code == 0, res.output
        x0 = spectra.load(out).arrays["x0"]
        np.testing.assert_array_equal(x0, points)  # all five (the default 8 capped at N)
    res = run("estimate", "--model", mem, "--data", fresh, "--out", tmp_path / "bad.h5", "--quiet")
    assert res.exit_code == 2 and "stores no training points" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_shipped_demo_network_finds_the_dimension(tmp_path):
    """The default model is the trained demo network (data/demo.pt); compare-theory finds the
    theory of its data spec (data/demo.toml) from the checkpoint, and at the smallest tau of the
    default grid every anchor shows the manifold gap at m = 40."""
    out = tmp_path / "demo.h5"
    res = run("estimate", "--out", out, "--times", "0.01,1", "--quiet")
    assert res.exit_code == 0, res.output
    config = json.loads(spectra.load(out).attrs["model_config"])
    assert config["kind"] == "trained"
    assert config["train"]["data_spec"]["variance_groups"] == [[1.0, 20], [0.05, 20]]
    res = run("compare-theory", out, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert metrics["theory"]["source"] == "run" and metrics["theory"]["m"] == 40
    small = min(metrics["times"], key=lambda r: r["tau"])
    assert small["measured_dimension_per_anchor"] == [40] * 8
    assert small["measured_phase"] == small["predicted_phase"] == "consolidation"
    large = max(metrics["times"], key=lambda r: r["tau"])
    assert large["measured_phase"] == large["predicted_phase"] == "trivial"
