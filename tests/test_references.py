"""The analytic references of [B] (Buchanan, Pai, Ma, De Bortoli, "On the Edge of Memorization in
Diffusion Models", NeurIPS 2025) as TOML specs: the partially memorizing denoiser (`kind =
"empirical"`, `memorized = M`) and the colored templates (`kind = "gmm"`, `preset = "templates"`).

Their closed-form Jacobians must equal torch's Hessian of log p_t; the partially memorizing score
must equal the empirical score of the first M points computed directly; the colored templates must
sample N(A_i u*, s^2 A_i A_i^T), A_i = I_c (x) x*_i, and have the one-component denoiser Jacobian
alpha s^2 / (sigma^2 + alpha^2 s^2 ||x*_i||^2) A_i A_i^T, of rank c, where the posterior is one-hot.
"""

import numpy as np
import pytest
import torch

from spectra.errors import SpectraError
from spectra.models import load_model
from spectra.models.specs import model_from_table
from spectra.spec_toml import read_toml

SCHEDULES = {"ve": '[schedule]\nname = "ve"\n', "vp-sqrt": '[schedule]\nname = "vp-sqrt"\n'}
CHANNELS = 3


def _write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _train_points(tmp_path, n=10, d=6):
    points = np.random.default_rng(3).standard_normal((n, d))
    np.save(tmp_path / "train.npy", points)
    return points


def _memorizing(tmp_path, memorized=4, schedule="vp-sqrt"):
    return _write(tmp_path, f'kind = "empirical"\npoints = "train.npy"\nmemorized = {memorized}\n'
                  + SCHEDULES[schedule])


def _templates(k=4):
    """k well-separated 3 x 3 monochrome templates (no two collinear), none zero."""
    rng = np.random.default_rng(7)
    return rng.uniform(0.2, 1.0, (k, 3, 3)) * rng.choice([-1.0, 1.0], (k, 3, 3))


COLOR_MEAN = [1.0, 0.5, -0.8]
VARIANCE = 0.3


def _templates_spec(tmp_path, templates, schedule="ve", extra=""):
    np.save(tmp_path / "templates.npy", templates)
    return _write(tmp_path, f'kind = "gmm"\npreset = "templates"\ntemplates = "templates.npy"\n'
                  f"channels = {CHANNELS}\nvariance = {VARIANCE}\ncolor_mean = {COLOR_MEAN}\n{extra}"
                  + SCHEDULES[schedule])


def _a_matrix(template, channels=CHANNELS):
    """A = I_c (x) x* ((c p) x c): column j holds x* in the j-th block of p (channel-major)."""
    return np.kron(np.eye(channels), template.reshape(-1, 1))


def _hessian_log_p(model, x, t):
    flat = x.reshape(len(x), -1)
    return torch.stack([
        torch.autograd.functional.hessian(lambda y: model.log_density(y[None], t)[0], xi)
        for xi in flat
    ])


def _noisy_points(model, t, n=4, seed=11):
    """x_t = alpha x0 + sigma eps near samples, plus midpoints (where the posterior is mixed)."""
    rng = np.random.default_rng(seed)
    alpha, sigma = model.alpha_sigma(t)
    x0 = model.sample(n, rng)
    x0 = np.concatenate([x0, (x0[:-1] + x0[1:]) / 2])
    return torch.as_tensor(alpha * x0 + sigma * 0.3 * rng.standard_normal(x0.shape))


def _assert_jacobian_is_hessian(model, t, mixed):
    x = _noisy_points(model, t)
    closed = model.jacobian(x, t, "score")
    hess = _hessian_log_p(model, x, t)
    assert closed.shape == hess.shape == (len(x), model.dim, model.dim)
    assert ((closed - hess).abs().max() / closed.abs().max()).item() < 1e-10
    if mixed:  # the posterior is split between components at some points (not a one-component test)
        _, log_joint, _ = model._terms(x.reshape(len(x), -1), t)
        assert (torch.softmax(log_joint, -1).max(-1).values < 0.99).any()


# --- the partially memorizing denoiser ------------------------------------------------------------
@pytest.mark.parametrize("schedule,t", [("vp-sqrt", 0.3), ("vp-sqrt", 0.7), ("ve", 0.35), ("ve", 0.6)])
def test_memorizing_jacobian_is_the_hessian(tmp_path, schedule, t):
    _train_points(tmp_path)
    model = load_model(str(_memorizing(tmp_path, 4, schedule)))
    assert model.dim == 6 and len(model.weights) == 4
    _assert_jacobian_is_hessian(model, t, mixed=True)


@pytest.mark.parametrize("schedule,t", [("vp-sqrt", 0.3), ("ve", 0.4)])
def test_memorizing_score_is_the_empirical_score_of_the_first_points(tmp_path, schedule, t):
    points = _train_points(tmp_path)
    model = load_model(str(_memorizing(tmp_path, 4, schedule)))
    full = load_model(str(_write(tmp_path, 'kind = "empirical"\npoints = "train.npy"\n' + SCHEDULES[schedule],
                                 "full.toml")))
    kept = points[:4]
    alpha, sigma = model.alpha_sigma(t)
    rng = np.random.default_rng(2)
    # near the kept points, near the left-out ones, and in between
    x = np.concatenate([alpha * kept + 0.5 * sigma * rng.standard_normal(kept.shape),
                        alpha * points[6:] + 0.5 * sigma * rng.standard_normal((4, 6)),
                        alpha * (kept[:-1] + kept[1:]) / 2])
    logits = -((x[:, None, :] - alpha * kept[None]) ** 2).sum(-1) / (2 * sigma**2)
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    expected = np.einsum("bi,bid->bd", r, alpha * kept[None] - x[:, None, :]) / sigma**2
    got = model.predict(torch.as_tensor(x), t).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
    assert not np.allclose(full.predict(torch.as_tensor(x), t).numpy(), expected)
    assert model.config()["memorized"] == 4 and model.config()["points"] == "train.npy"


# --- colored templates ----------------------------------------------------------------------------
@pytest.mark.parametrize("schedule,t,mixed", [("ve", 0.15, False), ("ve", 0.5, True), ("vp-sqrt", 0.4, True),
                                              ("vp-sqrt", 0.6, True)])
def test_templates_jacobian_is_the_hessian(tmp_path, schedule, t, mixed):
    model = load_model(str(_templates_spec(tmp_path, _templates(), schedule)))
    assert model.shape == (CHANNELS, 3, 3) and model.dim == 27
    _assert_jacobian_is_hessian(model, t, mixed)


def test_templates_components_are_the_colored_templates(tmp_path):
    """Means A_i u*, bases A_i/||x*_i|| spanning the same space, eigenvalues s^2 ||x*_i||^2."""
    templates = _templates()
    model = load_model(str(_templates_spec(tmp_path, templates)))
    for i, x_star in enumerate(templates):
        a = _a_matrix(x_star)
        np.testing.assert_allclose(model.means[i], a @ np.asarray(COLOR_MEAN), atol=1e-14)
        cov = model.bases[i] @ np.diag(model.eigenvalues[i]) @ model.bases[i].T
        np.testing.assert_allclose(cov, VARIANCE * a @ a.T, atol=1e-13)
        np.testing.assert_allclose(model.bases[i].T @ model.bases[i], np.eye(CHANNELS), atol=1e-14)


def test_templates_samples_have_the_colored_covariance(tmp_path):
    template = _templates(1)
    model = load_model(str(_templates_spec(tmp_path, template)))
    n = 20000
    y = model.sample(n, np.random.default_rng(0))
    assert y.shape == (n, CHANNELS, 3, 3)
    flat = y.reshape(n, -1)
    a = _a_matrix(template[0])
    scale = np.abs(template).max()
    # the color's sample mean and covariance err by ~ s/sqrt(n) and ~ s^2 sqrt(2/n): five of those
    np.testing.assert_allclose(flat.mean(0), a @ np.asarray(COLOR_MEAN),
                               atol=5 * np.sqrt(VARIANCE / n) * scale)
    np.testing.assert_allclose(np.cov(flat.T), VARIANCE * a @ a.T,
                               atol=5 * VARIANCE * np.sqrt(2 / n) * scale**2)
    # every sample is c (x) x*: each channel a multiple of the template
    residual = flat.reshape(n, CHANNELS, -1) - np.einsum("nc,p->ncp", y.reshape(n, CHANNELS, -1)
                                                         @ template[0].ravel() / (template[0] ** 2).sum(),
                                                         template[0].ravel())
    assert np.abs(residual).max() < 1e-12


@pytest.mark.parametrize("schedule,t", [("ve", 0.0), ("vp-sqrt", 0.01)])
def test_templates_denoiser_jacobian_at_a_component_mean(tmp_path, schedule, t):
    templates = _templates()
    model = load_model(str(_templates_spec(tmp_path, templates, schedule)))
    alpha, sigma = model.alpha_sigma(t)
    assert sigma <= 0.011
    for i, x_star in enumerate(templates):
        a = _a_matrix(x_star)
        x = torch.as_tensor(alpha * a @ np.asarray(COLOR_MEAN)).reshape(1, *model.shape)
        _, log_joint, _ = model._terms(x.reshape(1, -1), t)
        assert torch.softmax(log_joint, -1)[0, i].item() == 1.0  # the posterior is one-hot
        jac = model.jacobian(x, t, "denoiser")[0].numpy()
        norm2 = (x_star**2).sum()
        expected = alpha * VARIANCE / (sigma**2 + alpha**2 * VARIANCE * norm2) * a @ a.T
        assert np.abs(jac - expected).max() / np.abs(expected).max() < 1e-8
        singular = np.linalg.svd(jac, compute_uv=False)
        assert singular[CHANNELS - 1] > 0.5 and singular[CHANNELS:].max() < 1e-8


def test_flat_and_inline_templates(tmp_path):
    """Templates (K, p) give flat samples (c p,); inline lists equal the same array from a file;
    n_templates keeps the first K; ambient_dim may be given when it is c p."""
    templates = _templates().reshape(4, 9)
    np.save(tmp_path / "flat.npy", templates)
    from_file = load_model(str(_write(tmp_path, 'kind = "gmm"\npreset = "templates"\ntemplates = "flat.npy"\n'
                                      'n_templates = 2\nambient_dim = 27\n', "a.toml")))
    inline = load_model(str(_write(tmp_path, 'kind = "gmm"\npreset = "templates"\n'
                                   f"templates = {templates[:2].tolist()}\n", "b.toml")))
    assert from_file.shape == inline.shape == (27,)
    for name in ("means", "bases", "eigenvalues", "weights"):
        np.testing.assert_array_equal(getattr(from_file, name), getattr(inline, name))
    # the defaults: three channels, s^2 = 1, u* = (1, 1, 1)
    np.testing.assert_allclose(inline.eigenvalues, np.repeat((templates[:2] ** 2).sum(1)[:, None], 3, 1))
    np.testing.assert_allclose(inline.means[0], np.tile(templates[0], 3))
    assert inline.config()["templates"] == templates[:2].tolist()


# --- bad specs exit in one line -------------------------------------------------------------------
def test_bad_memorized_is_refused(tmp_path):
    _train_points(tmp_path)
    with pytest.raises(SpectraError, match=r"spec\.toml: 'memorized' must be at least 1, got 0"):
        load_model(str(_memorizing(tmp_path, 0)))
    with pytest.raises(SpectraError, match=r"'memorized' = 11 must be between 1 and the 10 points"):
        load_model(str(_memorizing(tmp_path, 11)))
    path = _write(tmp_path, 'kind = "empirical"\npoints = "train.npy"\nmemorized = 2.5\n')
    with pytest.raises(SpectraError, match="'memorized' must be int"):
        load_model(str(path))


@pytest.mark.parametrize("extra,match", [
    ("ambient_dim = 30\n", r"'ambient_dim' = 30 disagrees with channels x pixels = 3 x 9 = 27"),
    ("n_templates = 5\n", "'n_templates' must be between 1 and the 4 templates"),
])
def test_bad_template_sizes_are_refused(tmp_path, extra, match):
    with pytest.raises(SpectraError, match=match):
        load_model(str(_templates_spec(tmp_path, _templates(), extra=extra)))


def test_bad_templates_are_refused(tmp_path):
    zero = _templates()
    zero[2] = 0.0
    with pytest.raises(SpectraError, match=r"spec\.toml: 'templates' 2 is zero"):
        load_model(str(_templates_spec(tmp_path, zero)))
    head = 'kind = "gmm"\npreset = "templates"\n'
    cases = {
        "templates = [[1.0, 2.0]]\ncolor_mean = [1.0, 2.0]\n": "'color_mean' must be a list of channels = 3",
        "templates = [[1.0, 2.0], [3.0]]\n": "'templates' must be rectangular",
        "templates = [[1.0, true]]\n": "'templates' must hold numbers",
        "templates = [1.0, 2.0]\n": r"'templates' must be K >= 1 templates .* shape \(2,\)",
        "templates = [[1.0]]\nchannels = 0\n": "'channels' must be at least 1",
        "templates = [[1.0]]\nvariance = -1.0\n": "'variance' must be a finite number >= 0",
        'templates = "missing.npy"\n': "'templates': data file not found",
        "templates = [[1.0]]\nseed = 3\n": "unknown key",
        "templates = [[1.0]]\nchannels = 100000000\n": "memory",
    }
    for i, (text, match) in enumerate(cases.items()):
        with pytest.raises(SpectraError, match=match):
            load_model(str(_write(tmp_path, head + text, f"bad{i}.toml")))


def test_a_checkpoint_data_spec_names_no_template_file(tmp_path):
    """A table read from elsewhere (a checkpoint's data spec) passes only the inline kinds: its
    templates must be inline too."""
    path = _templates_spec(tmp_path, _templates())
    with pytest.raises(SpectraError, match="give the templates inline"):
        model_from_table(read_toml(path), path, kinds=("gaussian", "gmm"))
    inline = _write(tmp_path, 'kind = "gmm"\npreset = "templates"\ntemplates = [[1.0, 2.0]]\n', "i.toml")
    assert model_from_table(read_toml(inline), inline, kinds=("gaussian", "gmm")).dim == 6


def test_training_on_a_template_file_writes_a_checkpoint_with_the_templates_inline(tmp_path):
    """spectra train on a spec whose templates are a file stores them inline in the checkpoint,
    which then loads (its data spec names no file) with the same data model as the spec."""
    from click.testing import CliRunner
    from spectra_cli.main import cli

    from spectra.checkpoint import config_of, read_checkpoint

    templates = _templates()
    spec = _templates_spec(tmp_path, templates, extra="n_templates = 3\n")
    ck = tmp_path / "ck.pt"
    res = CliRunner().invoke(cli, ["train", "--data", str(spec), "--out", str(ck), "--steps", "2",
                                   "--batch-size", "4", "--width", "4", "--quiet"])
    assert res.exit_code == 0, res.output
    table = config_of(read_checkpoint(ck), ck)["data_spec"]
    assert np.array_equal(np.asarray(table["templates"]), templates)
    model = load_model(str(ck))
    assert model.shape == (CHANNELS, 3, 3) and type(model.module).__name__ == "SmallUNet"
    direct = load_model(str(spec))
    assert np.array_equal(model.data.means, direct.means) and model.data.means.shape[0] == 3
