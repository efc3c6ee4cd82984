"""`diffusers:FOLDER`: a UNet2DModel saved locally with its scheduler, each prediction_type.

The reference differentiates the raw diffusers model with torch.func.jacrev (math attention),
converting its prediction with the scheduler's own alphas_cumprod by the formulas written out
here; the run (forward mode, spectra's conversions and schedule) must match to 1e-8 (float64).
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli
from torch.nn.attention import SDPBackend, sdpa_kernel

import spectra

diffusers = pytest.importorskip("diffusers")

TIMES = (40, 600)


def build(folder, prediction_type, pipeline_layout=True, unet_options=None, **scheduler_options):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        **(unet_options or {}), sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    options = {"beta_schedule": "squaredcos_cap_v2", "prediction_type": prediction_type, **scheduler_options}
    sched = diffusers.DDPMScheduler(**options)
    unet.save_pretrained(folder / "unet" if pipeline_layout else folder)
    sched.save_pretrained(folder / "scheduler" if pipeline_layout else folder)
    return sched


def reference(folder, sched, prediction_type, target, x0, t, pipeline_layout=True, class_label=None):
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet" if pipeline_layout else folder)
    unet = unet.double().eval()
    abar = sched.alphas_cumprod.double()[t]
    a, s = abar.sqrt(), (1 - abar).sqrt()
    steps = torch.tensor([t])

    def fn(x):
        extra = {} if class_label is None else {"class_labels": torch.tensor([class_label])}
        pred = unet(x[None], steps, **extra).sample[0]
        if prediction_type == "epsilon":
            eps = pred
        elif prediction_type == "sample":
            eps = (x - a * pred) / s
        else:  # v = a eps - s x0, with a^2 + s^2 = 1
            eps = a * pred + s * x
        return {"score": -eps / s, "eps": eps, "denoiser": (x - s * eps) / a}[target]

    with sdpa_kernel([SDPBackend.MATH]):
        jac = torch.func.jacrev(fn)(a * torch.as_tensor(x0))
    return torch.linalg.svdvals(jac.detach().reshape(192, 192)).numpy()


@pytest.mark.parametrize(("prediction_type", "target", "layout"), [
    ("epsilon", "score", True), ("sample", "denoiser", True), ("v_prediction", "eps", False),
])
def test_diffusers_unet_matches_torch_func_on_the_raw_model(tmp_path, prediction_type, target, layout):
    folder = tmp_path / "model"
    sched = build(folder, prediction_type, layout)
    out = tmp_path / "run.h5"
    res = CliRunner().invoke(cli, [
        "estimate", "--model", f"diffusers:{folder}", "--data", "noise", "--n-samples", "2",
        "--times", ",".join(map(str, TIMES)), "--target", target, "--method", "jvp", "--out", str(out),
        "--quiet"])
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    assert traj.complete
    assert traj.attrs["parameterization"] == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[
        prediction_type]
    schedule = json.loads(traj.attrs["schedule"])
    np.testing.assert_array_equal(schedule["alphas_cumprod"], sched.alphas_cumprod.double().numpy())
    np.testing.assert_allclose(traj["alpha"] ** 2, sched.alphas_cumprod.double().numpy()[list(TIMES)],
                               rtol=1e-15)
    path = json.loads(traj.attrs["autodiff"])
    assert (path["method"], path["context"]) == ("jvp", "forward-ad-safe")  # attention blocks
    config = json.loads(traj.attrs["model_config"])
    assert config["prediction_type"] == prediction_type and config["model_class"] == "UNet2DModel"
    worst = 0.0
    for n in range(2):
        for ti, t in enumerate(TIMES):
            exact = reference(folder, sched, prediction_type, target, traj["x0"][n], t, layout)
            worst = max(worst, float(np.max(np.abs(traj["singular_values"][n, ti] - exact) / exact)))
    assert worst < 1e-8, worst


def test_zero_terminal_snr_scheduler(tmp_path):
    """rescale_betas_zero_snr (v-prediction, as such models are trained): alphas_cumprod ends in
    0. The default grid stops at the last step with alpha > 0, which matches the raw model
    there; the pure-noise step is refused with one line naming why."""
    folder = tmp_path / "model"
    sched = build(folder, "v_prediction", rescale_betas_zero_snr=True, beta_schedule="linear")
    assert float(sched.alphas_cumprod[-1]) == 0.0
    out = tmp_path / "run.h5"
    res = CliRunner().invoke(cli, ["estimate", "--model", f"diffusers:{folder}", "--data", "noise",
                                   "--n-samples", "1", "--n-times", "3", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    traj = spectra.load(out)
    assert traj["t"].max() == 998 and np.all(np.isfinite(traj["tau"]))
    for ti, t in enumerate(traj["t"].astype(int)):
        exact = reference(folder, sched, "v_prediction", "score", traj["x0"][0], t)
        assert np.max(np.abs(traj["singular_values"][0, ti] - exact) / exact) < 1e-8, t
    res = CliRunner().invoke(cli, ["estimate", "--model", f"diffusers:{folder}", "--data", "noise",
                                   "--times", "999", "--out", str(tmp_path / "x.h5"), "--quiet"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "zero terminal SNR" in res.output and not (tmp_path / "x.h5").exists()


def test_class_conditional_unet(tmp_path):
    """A UNet2DModel with num_class_embeds: --class-label K passes class_labels = [K], and the
    values match the raw model called with that label (and differ from another class's)."""
    folder = tmp_path / "model"
    sched = build(folder, "epsilon", unet_options={"num_class_embeds": 3})
    runs = {}
    for label in (1, 2):
        runs[label] = out = tmp_path / f"run{label}.h5"
        res = CliRunner().invoke(cli, ["estimate", "--model", f"diffusers:{folder}", "--data", "noise",
                                       "--n-samples", "1", "--times", "600", "--class-label", str(label),
                                       "--out", str(out), "--quiet"])
        assert res.exit_code == 0, res.output
    traj = spectra.load(runs[2])
    exact = reference(folder, sched, "epsilon", "score", traj["x0"][0], 600, class_label=2)
    assert np.max(np.abs(traj["singular_values"][0, 0] - exact) / exact) < 1e-8
    other = spectra.load(runs[1])["singular_values"][0, 0]
    assert np.max(np.abs(other - exact) / exact) > 1e-6
    res = CliRunner().invoke(cli, ["estimate", "--model", f"diffusers:{folder}", "--data", "noise",
                                   "--class-label", "3", "--out", str(tmp_path / "x.h5"), "--quiet"])
    assert res.exit_code == 2 and "not a class of this model (0..2)" in res.output


def test_bad_diffusers_folders_are_one_line_exit_2(tmp_path):
    runner = CliRunner()
    cases = {"missing": tmp_path / "nope", "no scheduler": tmp_path / "half"}
    diffusers.UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                          down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(cases["no scheduler"])
    for why, folder in cases.items():
        res = runner.invoke(cli, ["estimate", "--model", f"diffusers:{folder}", "--data", "noise",
                                  "--out", str(tmp_path / "x.h5"), "--quiet"])
        assert res.exit_code == 2, why
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert ("not found" if why == "missing" else "scheduler_config.json") in res.output
