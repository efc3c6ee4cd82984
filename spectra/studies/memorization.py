"""Does a model reproduce its training points? (`spectra memorization`; docs/theory.md 3.7)

A generated sample x counts as memorized when its distance to the nearest training point is below
a third of its distance to the second-nearest, ||x - x_(1)|| / ||x - x_(2)|| < 1/3 (Yoon et al.,
ICML 2023 workshop; Gu et al., 2023; Buchanan et al., NeurIPS 2025). The memorized fraction is the
share of generated samples that are. DIR/metrics.json holds, per sample, both distances, their
ratio and the nearest point's index; the figures show generated samples beside their nearest
training points, and the histogram of ratios.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from spectra import plot
from spectra.arrays import load_array
from spectra.errors import SpectraError
from spectra.models.analytic import GaussianMixture
from spectra.models.base import ScoreModel
from spectra.models.trained import TrainedScoreModel
from spectra.sampling import Samples, load_conditioned, sample
from spectra.studies.phases import METRICS, METRICS_FORMAT, check_dpi, output_folder

#: nearest / second-nearest distance ratio below which a sample counts as memorized
THRESHOLD = 1 / 3
_CHUNK = 2**22


def nearest_two(samples: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d1, d2, index), each (n,): the Euclidean distances from each of the n samples (n, D) to its
    nearest and second-nearest of the N >= 2 training points (N, D), and the nearest's index.
    ||x - y||^2 is summed directly (no ||x||^2 + ||y||^2 - 2 x.y cancellation), in chunks."""
    samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    if len(train) < 2:
        raise SpectraError("memorization needs at least 2 training points")
    if samples.shape[1] != train.shape[1]:
        raise SpectraError(f"samples have D = {samples.shape[1]} but training points D = {train.shape[1]}")
    rows = max(1, _CHUNK // (len(train) * train.shape[1]))
    d1, d2 = np.empty(len(samples)), np.empty(len(samples))
    index = np.empty(len(samples), dtype=np.int64)
    for start in range(0, len(samples), rows):
        block = samples[start : start + rows]
        dist = np.sqrt(((block[:, None, :] - train[None]) ** 2).sum(-1))
        two = np.argpartition(dist, 1, axis=1)[:, :2]
        pair = np.take_along_axis(dist, two, axis=1)
        order = np.argsort(pair, axis=1)
        d1[start : start + rows] = np.take_along_axis(pair, order[:, :1], axis=1)[:, 0]
        d2[start : start + rows] = np.take_along_axis(pair, order[:, 1:], axis=1)[:, 0]
        index[start : start + rows] = np.take_along_axis(two, order[:, :1], axis=1)[:, 0]
    return d1, d2, index


def memorized_fraction(samples: np.ndarray, train: np.ndarray, threshold: float = THRESHOLD) -> float:
    """The share of samples (n, D) whose nearest / second-nearest training distance ratio is
    below `threshold`."""
    d1, d2, _ = nearest_two(samples, train)
    return float(np.mean(_ratio(d1, d2) < threshold))


def _ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """d1 / d2; 0 where d2 = 0 (then d1 = 0 too: the sample is a training point that appears twice)."""
    return np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1), 0.0)


def training_points(model: ScoreModel, train_data: str | None = None) -> np.ndarray:
    """The training set (N, *shape): --train-data if given, else the checkpoint's own points (a
    spectra train network trained on a finite set) or the points of an empirical (memorizing)
    analytic model."""
    if train_data is not None:
        return load_array(train_data)
    if isinstance(model, TrainedScoreModel) and model.train_points is not None:
        return model.train_points.reshape(-1, *model.shape)
    if isinstance(model, GaussianMixture) and model.eigenvalues.size == 0:
        return model.means.reshape(-1, *model.shape)
    raise SpectraError(f"{model.spec or 'the model'} has no training points of its own: give --train-data")


def figure_names(fmt: str) -> tuple[str, str]:
    """The figure files of a memorization study in format `fmt`."""
    return f"nearest.{fmt}", f"ratios.{fmt}"


def study(model_spec: str | None, out_dir: str | Path, n: int = 100, train_data: str | None = None,
          steps: int = 32, sampler: str = "heun", seed: int = 0, fmt: str = "png", dpi: int = plot.DPI,
          threshold: float = THRESHOLD, progress: bool = False, **load: Any) -> dict[str, Any]:
    """Sample `model_spec`, measure memorization against its training set and write
    DIR/metrics.json and the figures; returns the metrics. `load`: load_model's schedule,
    parameterization, shape and allow_pickle for the spec."""
    if not 0 < threshold <= 1:
        raise SpectraError(f"--threshold must be in (0, 1], got {threshold}")
    dpi = check_dpi(dpi)
    model = load_conditioned(model_spec, **load)
    train = training_points(model, train_data)
    if len(train) < 2:
        raise SpectraError("memorization needs at least 2 training points")
    out = output_folder(Path(out_dir), (METRICS, *figure_names(fmt)), "memorization")
    if model.shape is not None and tuple(train.shape[1:]) != tuple(model.shape) \
            and train[0].size != math.prod(model.shape):
        raise SpectraError(f"training points of shape {train.shape[1:]} do not match the model's "
                           f"samples {model.shape}")
    generated = sample(model, n, steps, sampler, seed, progress=progress)
    metrics = measure(generated, train, threshold)
    metrics["model"] = model.spec
    metrics["train_data"] = train_data or "the model's own"
    figures = [_nearest_figure(out / figure_names(fmt)[0], generated.x, train, metrics, dpi),
               _ratio_figure(out / figure_names(fmt)[1], metrics, dpi)]
    metrics["figures"] = [f.name for f in figures]
    tmp = out / f"{METRICS}.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / METRICS)
    return metrics


def measure(generated: Samples, train: np.ndarray, threshold: float = THRESHOLD) -> dict[str, Any]:
    """The memorization metrics of generated samples against training points (N, *shape)."""
    d1, d2, index = nearest_two(generated.x, train)
    ratio = _ratio(d1, d2)
    return {
        "format": METRICS_FORMAT, "kind": "memorization", "threshold": threshold,
        "n_generated": len(d1), "n_train": len(train),
        "memorized_fraction": float(np.mean(ratio < threshold)),
        "median_ratio": float(np.median(ratio)),
        "sampler": generated.record(),
        "samples": [{"nearest": float(a), "second": float(b), "ratio": float(r), "nearest_index": int(i)}
                    for a, b, r, i in zip(d1, d2, ratio, index, strict=True)],
    }


def _image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image of one sample for imshow: (H, W) grey, (H, W, 3) colour scaled to [0, 1], or a
    flat vector laid out as the squarest rectangle that holds it."""
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3 and x.shape[0] == 3:
        rgb = np.moveaxis(x, 0, -1)
        lo, hi = rgb.min(), rgb.max()
        return (rgb - lo) / (hi - lo if hi > lo else 1.0), None
    if x.ndim == 2:
        return x, "gray"
    flat = x.reshape(-1)
    rows = max(r for r in range(1, math.isqrt(flat.size) + 1) if flat.size % r == 0)
    return flat.reshape(rows, -1), "viridis"


def _nearest_figure(path: Path, generated: np.ndarray, train: np.ndarray, metrics: dict, dpi: int) -> Path:
    count = min(8, len(generated))
    fig = Figure(figsize=(1.3 * count + 0.8, 3.4), layout="constrained")
    axes = fig.subplots(2, count, squeeze=False)
    for j in range(count):
        row = metrics["samples"][j]
        for i, (x, title) in enumerate(((generated[j], f"ratio {row['ratio']:.2f}"),
                                        (train[row["nearest_index"]], f"train #{row['nearest_index']}"))):
            image, cmap = _image(np.asarray(x))
            axes[i, j].imshow(image, cmap=cmap)
            axes[i, j].set_title(title, fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("generated")
    axes[1, 0].set_ylabel("nearest training")
    fig.suptitle(f"generated samples and their nearest training points "
                 f"(memorized fraction {metrics['memorized_fraction']:.2f})")
    return plot.save(fig, path, dpi)


def _ratio_figure(path: Path, metrics: dict, dpi: int) -> Path:
    ratios = np.array([row["ratio"] for row in metrics["samples"]])
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.hist(ratios, bins=np.linspace(0, max(1.0, float(ratios.max())), 41), color="tab:blue")
    ax.axvline(metrics["threshold"], color="tab:red", linestyle="--",
               label=f"threshold {metrics['threshold']:.3g}")
    ax.set_xlabel(r"$\|x - x_{(1)}\| \,/\, \|x - x_{(2)}\|$ (nearest / second-nearest training distance)")
    ax.set_ylabel("generated samples")
    ax.set_title(f"memorized fraction {metrics['memorized_fraction']:.3f} of {metrics['n_generated']}")
    ax.legend(loc="upper right")
    return plot.save(fig, path, dpi)
