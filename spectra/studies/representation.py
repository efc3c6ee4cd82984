"""How well a diffusion model's features separate classes across noise levels (`spectra represent`;
docs/theory.md 3.6, 3.8; Li et al., NeurIPS 2025).

Labelled samples x0 (N, *shape) are split into train and test parts (stratified, seeded). At each
VE-equivalent noise level sigma = sqrt(tau) of a log-spaced grid, at the time t with tau(t) =
sigma^2, the model sees x_t = alpha(t) (x0 + sigma eps) (one seeded eps per sample for every level),
and its feature is the denoiser's output or, with `feature`, the activation of a submodule (B, ...),
flattened; `ensemble` W concatenates the features of the W neighbouring levels on each side
(fewer at the ends). Per level, DIR/metrics.json holds Li et al.'s SNR of the features (unit norm,
training mean removed, class bases of `rank`; spectra.theory.representation.feature_snr, on the
training split) and the test accuracy of a linear probe (scikit-learn's logistic regression on
standardized features, fit on the training split). When the data is a MoLRG mixture it also holds
the exact-subspace SNR of the raw denoiser on all samples (class_snr with the true U_k), the mean
exact posterior weight w+ of the true class and Theorem 1's SNR at that w+. `curves` gives each
curve's shape over sigma (curve_shape). The figures show the SNR and the probe accuracy against
sigma.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from spectra import plot
from spectra.arrays import data_file, load_array
from spectra.errors import SpectraError
from spectra.limits import require_memory
from spectra.models.analytic import GaussianMixture
from spectra.models.base import ScoreModel
from spectra.models.specs import load_model
from spectra.models.trained import TrainedScoreModel
from spectra.sampling import load_conditioned
from spectra.schedules import Schedule
from spectra.studies.phases import METRICS, METRICS_FORMAT, check_dpi, output_folder
from spectra.theory import representation as theory

#: the default grid: N_SIGMAS levels from SIGMA_RANGE (clipped to the schedule's default range)
SIGMA_RANGE, N_SIGMAS = (0.01, 4.0), 16
#: samples drawn from a mixture when --n-samples is not given
N_SAMPLES = 3000
#: bytes of model activations one batch may take (as spectra.sampling)
_BATCH_BYTES = 2**28
FIGURES = ("snr", "probe")


@dataclass
class LabeledData:
    """Samples x0 (N, *shape), their class labels (N,), where they came from, and the mixture
    that drew them (None for an array file)."""

    x: np.ndarray
    labels: np.ndarray
    source: str
    mixture: GaussianMixture | None = None


# --- inputs ----------------------------------------------------------------------------------
def labeled_data(model: ScoreModel, data: str | None, n_samples: int | None,
                 rng: np.random.Generator) -> LabeledData:
    """The labelled samples: an .npz of `x` and `labels` (as `spectra dataset` writes), else
    n_samples (default N_SAMPLES) draws by `rng` of a Gaussian-mixture spec or of the model's own
    mixture (the model, or the data a `spectra train` network learned), labelled by component."""
    if data is not None and data_file(data)[0].suffix.lower() != ".toml":
        if n_samples is not None:
            raise SpectraError("--n-samples applies to a mixture spec, not to an array file")
        return LabeledData(*load_labeled(data), source=str(data))
    if data is not None:
        mixture, source = load_model(data), str(data)
        if not isinstance(mixture, GaussianMixture):
            raise SpectraError(f"--data {data}: a data spec must describe a Gaussian mixture")
    elif isinstance(model, GaussianMixture):
        mixture, source = model, "the model's own data"
    elif isinstance(model, TrainedScoreModel) and isinstance(model.data, GaussianMixture):
        mixture, source = model.data, "the data the model was trained on"
    else:
        raise SpectraError(f"{model.spec or 'the model'} has no labelled data of its own: give --data")
    if mixture.eigenvalues.size == 0:
        raise SpectraError(f"{source} is an empirical distribution, which has no classes: give --data")
    n = N_SAMPLES if n_samples is None else n_samples
    require_memory(4 * 8 * n * mixture.dim, f"--n-samples {n} samples of D = {mixture.dim}")
    x, labels = mixture.sample_labeled(n, rng)
    return LabeledData(x, labels, source, mixture)


def load_labeled(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, *shape), labels (N,) int64) of an .npz holding arrays x and labels."""
    path = data_file(spec)[0]
    if path.suffix.lower() != ".npz":
        raise SpectraError(f"--data {spec}: expected an .npz holding x and labels (spectra dataset "
                           "writes one) or a mixture spec .toml")
    x = load_array(spec)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = arrays.files
            labels = arrays["labels"] if "labels" in names else None
    except (OSError, ValueError) as exc:  # a damaged member, or one holding Python objects
        raise SpectraError(f"cannot read the labels of {path}: {exc}".splitlines()[0]) from None
    if labels is None:
        raise SpectraError(f"{path} holds no array 'labels' (it holds {', '.join(names)})")
    if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer):
        raise SpectraError(f"{path}: labels must be {len(x)} integers, one per sample, got "
                           f"{labels.dtype} of shape {labels.shape}")
    return x, labels.astype(np.int64)


def noise_grid(schedule: Schedule, sigmas: list[float] | None = None, n_sigmas: int | None = None,
               sigma_min: float | None = None, sigma_max: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(sigma (L,), t (L,)), sigma increasing: `sigmas`, or n_sigmas log-spaced from sigma_min to
    sigma_max (defaults: SIGMA_RANGE clipped to the schedule's default range, N_SIGMAS), each
    refused outside the schedule's range and mapped to the time t with tau(t) = sigma^2 (for
    integer timesteps the nearest step, repeats merged; sigma is then the step's own)."""
    if sigmas is not None and (n_sigmas, sigma_min, sigma_max) != (None, None, None):
        raise SpectraError("give --sigmas or --n-sigmas/--sigma-min/--sigma-max, not both")
    lo_t, hi_t, lo_open, hi_open = schedule.bounds
    with np.errstate(divide="ignore"):
        lo, hi = (float(np.sqrt(schedule.tau(t))) for t in (lo_t, hi_t))
    if sigmas is None:
        default_lo, default_hi = np.sqrt(schedule.tau(np.asarray(schedule.default_range)))
        a = max(SIGMA_RANGE[0], default_lo) if sigma_min is None else sigma_min
        b = min(SIGMA_RANGE[1], default_hi) if sigma_max is None else sigma_max
        n = N_SIGMAS if n_sigmas is None else n_sigmas
        if not (0 < a < b < math.inf) or n < 2:
            raise SpectraError(f"need 0 < --sigma-min < --sigma-max and --n-sigmas >= 2, got {a:g}, "
                               f"{b:g} and {n}")
        sigmas = np.geomspace(a, b, n)
    grid = np.unique(np.asarray(sigmas, dtype=np.float64))
    for s in grid:
        if not np.isfinite(s) or s < lo or s > hi or (lo_open and s == lo) or (hi_open and s == hi):
            raise SpectraError(f"sigma = {s:g} is outside the range {'(' if lo_open else '['}{lo:g}, "
                               f"{hi:g}{')' if hi_open else ']'} of schedule {schedule.name!r}")
    with np.errstate(divide="ignore"):
        t = schedule.times_of_tau(grid**2, lo_t, hi_t)
    schedule.validate(t)  # a sigma so large that its time rounds to an open end of the range
    if len(t) < 2:
        raise SpectraError(f"need at least 2 noise levels, got {len(t)}")
    return (np.sqrt(schedule.tau(t)) if schedule.integer_times else grid), t


def split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted indices: in every class a share `test_fraction` (at least one sample,
    and one left to train) chosen at random goes to test."""
    if not 0 < test_fraction < 1:
        raise SpectraError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise SpectraError(f"the data has a single class ({classes[0]}): classes need at least two")
    if counts.min() < 2:
        raise SpectraError(f"class {classes[counts.argmin()]} has a single sample: each class needs "
                           "two (one to train, one to test)")
    test = []
    for k, count in zip(classes, counts, strict=True):
        rows = rng.permutation(np.flatnonzero(labels == k))
        test.append(rows[: min(max(1, round(count * test_fraction)), count - 1)])
    test_rows = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_rows), test_rows


def molrg_subspaces(mixture: GaussianMixture | None) -> tuple[list[np.ndarray], float] | None:
    """([U_k (D, d)] the class subspaces, delta) of a MoLRG mixture (spec preset molrg: component k's
    columns k d .. (k+1) d hold its eigenvalue-1 directions), else None."""
    config = mixture.config() if mixture is not None else {}
    if config.get("preset") != "molrg":
        return None
    d = int(config["subspace_dim"])
    return [mixture.bases[k][:, k * d : (k + 1) * d] for k in range(len(mixture.weights))], \
        float(config["delta"])


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray,
                   test_labels: np.ndarray) -> float:
    """Test accuracy of a logistic-regression probe on standardized features (N, p), fit on the
    training rows (scikit-learn)."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise SpectraError('the linear probe needs scikit-learn: pip install "diffusion-spectra[data]"') \
            from None
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(train, train_labels)
    return float(probe.score(test, test_labels))


class _Levels:
    """The model's outputs (N, p) on the samples x0 (N, D) with noise eps (N, D), seen in the
    model's sample `shape`, at each noise level: computed once and kept until `release`."""

    def __init__(self, model: ScoreModel, x0: np.ndarray, eps: np.ndarray, shape: tuple[int, ...],
                 sigma: np.ndarray, t: np.ndarray) -> None:
        self.model, self.x0, self.eps, self.shape, self.sigma, self.t = model, x0, eps, shape, sigma, t
        self.batch = max(1, _BATCH_BYTES // (8 * x0.shape[1] * max(1, model.activation_factor)))
        self.kept: dict[tuple[str, int], np.ndarray] = {}

    def output(self, target: str, i: int) -> np.ndarray:
        """model.target(x_t, t_i, target) at x_t = alpha(t_i) (x0 + sigma_i eps), flattened."""
        if (target, i) not in self.kept:
            t = float(self.t[i])
            alpha = float(self.model.schedule.alpha(t))
            parts = []
            with torch.no_grad():
                for start in range(0, len(self.x0), self.batch):
                    rows = slice(start, start + self.batch)
                    y = (self.x0[rows] + self.sigma[i] * self.eps[rows]).reshape(-1, *self.shape)
                    out = self.model.target(torch.from_numpy(alpha * y), t, target)
                    parts.append(out.reshape(out.shape[0], -1).numpy())
            value = np.concatenate(parts)
            if not np.all(np.isfinite(value)):
                raise SpectraError(f"the model's {target} is not finite (NaN or inf) at sigma = "
                                   f"{self.sigma[i]:g}")
            self.kept[(target, i)] = value
        return self.kept[(target, i)]

    def release(self, below: int) -> None:
        """Forget the outputs of the levels below index `below`."""
        self.kept = {key: v for key, v in self.kept.items() if key[1] >= below}


# --- the study -------------------------------------------------------------------------------
def study(model_spec: str | None, out_dir: str | Path, data: str | None = None,
          sigmas: list[float] | None = None, n_sigmas: int | None = None, sigma_min: float | None = None,
          sigma_max: float | None = None, feature: str | None = None, rank: int = 5, ensemble: int = 0,
          test_fraction: float = 0.3, n_samples: int | None = None, seed: int = 0, fmt: str = "png",
          dpi: int = plot.DPI, **load: Any) -> dict[str, Any]:
    """Measure representation quality across noise levels (module docstring) and write
    DIR/metrics.json and the figures; returns the metrics. `load`: load_conditioned's schedule,
    parameterization, shape, class_label and allow_pickle for the model spec."""
    if rank < 1 or ensemble < 0:
        raise SpectraError(f"--rank must be at least 1 and --ensemble at least 0, got {rank} and {ensemble}")
    if n_samples is not None and n_samples < 2:
        raise SpectraError(f"--n-samples must be at least 2, got {n_samples}")
    if fmt not in plot.FORMATS:
        raise SpectraError(f"--format must be one of {', '.join(plot.FORMATS)}, got {fmt!r}")
    dpi, names = check_dpi(dpi), tuple(f"{name}.{fmt}" for name in FIGURES)
    model = load_conditioned(model_spec, **load)
    sigma, t = noise_grid(model.schedule, sigmas, n_sigmas, sigma_min, sigma_max)
    seeds = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    labeled = labeled_data(model, data, n_samples, seeds[0])
    train, test = split(labeled.labels, test_fraction, seeds[1])
    classes, counts = np.unique(labeled.labels[train], return_counts=True)
    if counts.min() <= rank:
        raise SpectraError(f"class {classes[counts.argmin()]} has {counts.min()} training samples, at most "
                           f"--rank {rank}: its subspace would hold them all (an infinite SNR); give more "
                           "samples or a smaller --rank")
    out = output_folder(Path(out_dir), (METRICS, *names), "representation")
    eps = seeds[2].standard_normal(labeled.x.shape)
    rows = measure_levels(model, labeled, sigma, t, eps, train, test, feature, rank, ensemble)
    metrics = {
        "format": METRICS_FORMAT, "kind": "representation", "model": model.spec,
        "data": labeled.source, "feature": feature or "denoiser",
        "classes": np.unique(labeled.labels).tolist(), "n_train": len(train), "n_test": len(test),
        "options": {"rank": rank, "ensemble": ensemble, "test_fraction": test_fraction, "seed": seed,
                    "n_samples": len(labeled.x)},
        "levels": rows, "curves": curves(rows),
    }
    figures = [_snr_figure(out / names[0], metrics, dpi), _probe_figure(out / names[1], metrics, dpi)]
    metrics["figures"] = [f.name for f in figures]
    tmp = out / f"{METRICS}.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / METRICS)
    return metrics


def measure_levels(model: ScoreModel, labeled: LabeledData, sigma: np.ndarray, t: np.ndarray,
                   eps: np.ndarray, train: np.ndarray, test: np.ndarray, feature: str | None = None,
                   rank: int = 5, ensemble: int = 0) -> list[dict[str, Any]]:
    """The metrics (module docstring) at each noise level sigma (L,), time t (L,), of the model's
    features at x_t = alpha(t) (x0 + sigma eps), eps of the samples' shape: the SNR and the probe
    on the `train` and `test` rows, and for MoLRG data the exact ones on all."""
    x0 = labeled.x.reshape(len(labeled.x), -1)
    shape = tuple(model.shape) if model.shape is not None else labeled.x.shape[1:]
    if x0.shape[1] != math.prod(shape):
        raise SpectraError(f"samples of shape {labeled.x.shape[1:]} do not fit the model's {shape}")
    model.to("cpu", torch.float64)
    levels = _Levels(model, x0, eps.reshape(x0.shape), shape, sigma, t)
    target = "denoiser" if feature is None else f"feature:{feature}"
    molrg = molrg_subspaces(labeled.mixture)
    return [_level(levels, i, target, labeled.labels, molrg, train, test, rank, ensemble)
            for i in range(len(t))]


def _level(levels: _Levels, i: int, target: str, labels: np.ndarray,
           molrg: tuple[list[np.ndarray], float] | None, train: np.ndarray, test: np.ndarray, rank: int,
           ensemble: int) -> dict[str, Any]:
    """The metrics at noise level i (with the exact ones where `molrg` gives the class subspaces
    and delta); the outputs no later level needs are released."""
    window = range(max(0, i - ensemble), min(len(levels.t), i + ensemble + 1))
    features = np.concatenate([levels.output(target, j) for j in window], axis=1)
    if rank >= features.shape[1]:
        raise SpectraError(f"--rank {rank} must be below the feature dimension {features.shape[1]}")
    s = float(levels.sigma[i])
    denoised = levels.output("denoiser", i) if molrg is not None else None
    try:  # the theory refuses degenerate features (a zero vector) in one line
        row = {"sigma": s, "t": float(levels.t[i]), "tau": s**2,
               "snr": _finite(theory.feature_snr(features[train], labels[train], rank)),
               "probe_accuracy": probe_accuracy(features[train], labels[train], features[test], labels[test])}
        if molrg is not None:
            bases, delta = molrg
            posterior = theory.molrg_posterior(levels.x0 + s * levels.eps, bases, delta, s)
            w_plus = float(np.mean(posterior[np.arange(len(labels)), labels]))
            row |= {"snr_exact": _finite(theory.class_snr(denoised, labels, dict(enumerate(bases)))),
                    "snr_theorem1": float(theory.theorem1_snr(s, delta, len(bases), w_plus)),
                    "posterior_weight": w_plus}
    except ValueError as exc:
        raise SpectraError(f"at sigma = {s:g}: {exc}") from None
    levels.release(i + 1 - ensemble)
    return row


def _finite(value: float) -> float | None:
    """value, or None (JSON null) when it is infinite."""
    return value if math.isfinite(value) else None


def curves(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{name: {shape, direction, argmax_sigma, max}} of each metric's curve over sigma (None for
    a curve with a missing value)."""
    sigma = [row["sigma"] for row in rows]
    out = {}
    for name in ("snr", "probe_accuracy", "snr_exact", "snr_theorem1"):
        if name not in rows[0]:
            continue
        values = [row[name] for row in rows]
        if any(v is None for v in values):
            out[name] = None
            continue
        shape = theory.curve_shape(sigma, values)
        out[name] = {"shape": shape["shape"], "direction": shape["direction"],
                     "argmax_sigma": shape["argmax"], "max": shape["max"]}
    return out


# --- figures ---------------------------------------------------------------------------------
def _column(metrics: dict, name: str) -> np.ndarray:
    return np.array([np.nan if row[name] is None else row[name] for row in metrics["levels"]], dtype=float)


def _snr_figure(path: Path, metrics: dict, dpi: int) -> Path:
    sigma = _column(metrics, "sigma")
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(sigma, _column(metrics, "snr"), "o-", color="tab:blue",
            label=f"{metrics['feature']} features (rank {metrics['options']['rank']}, training split)")
    if "snr_exact" in metrics["levels"][0]:
        ax.plot(sigma, _column(metrics, "snr_exact"), "s-", color="tab:green",
                label="raw denoiser, true class subspaces")
        ax.plot(sigma, _column(metrics, "snr_theorem1"), "--", color="tab:red",
                label="Theorem 1 at the measured $w_+$")
    ax.set_xscale("log")
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()])
    if np.any(np.isfinite(values) & (values > 0)):  # a log axis needs a positive value to show
        ax.set_yscale("log")
    ax.set_xlabel(r"noise level $\sigma = \sqrt{\tau}$")
    ax.set_ylabel("SNR (Li et al., Definition 1)")
    ax.set_title(f"representation SNR across noise levels ({metrics['model'] or 'model'})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    return plot.save(fig, path, dpi)


def _probe_figure(path: Path, metrics: dict, dpi: int) -> Path:
    sigma = _column(metrics, "sigma")
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(sigma, _column(metrics, "probe_accuracy"), "o-", color="tab:blue",
            label="linear probe (test split)")
    ax.axhline(1 / len(metrics["classes"]), color="tab:gray", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(r"noise level $\sigma = \sqrt{\tau}$")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"linear-probe accuracy of the {metrics['feature']} features", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return plot.save(fig, path, dpi)
