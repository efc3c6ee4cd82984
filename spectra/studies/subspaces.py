"""Principal angles between a Jacobian's top singular subspace and reference subspaces over time
(`spectra angles`; theory.md 3.6).

A run written with --save-vectors V holds the top V right singular vectors of every Jacobian
(N, T, V, D). The top-k of them span a subspace of R^D; its principal angles theta_1 >= ... >=
theta_k' to a reference subspace B (D x r, k' = min(k, r)) are the arccosines of the singular
values of Q_J^T Q_B (Bjorck & Golub 1973; scipy.linalg.subspace_angles). theta_1 = 0 means the
Jacobian's subspace lies inside B (k <= r). References:

* `classes`: the class subspaces of the run's mixture (an analytic gmm spec, or the data of a
  `spectra train` network trained on one): for each component the span of C_k's eigenvectors at
  its largest level (U_k for MoLRG), or of all of C_k's for a component with one level;
* `pca`: the top-r principal components of the data (the run's anchors, or --data samples);
* a .npy file: a basis (D, r), or several (B, D, r); columns need not be orthonormal.

Each anchor's own reference is the one whose affine subspace (through its class's mean, the
samples' mean, or 0 for a given basis) lies nearest the anchor (a mixture point's own class); the
summary reports per time the median over anchors of the largest angle to
it, and to each reference.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
from matplotlib.figure import Figure

from spectra import plot, store
from spectra.arrays import load_array
from spectra.errors import SpectraError
from spectra.studies.phases import METRICS, METRICS_FORMAT, check_dpi, figure_names, output_folder

FIGURES = ("angles",)


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, descending) between the column spans of a (D, k) and b (D, r)."""
    return scipy.linalg.subspace_angles(a, b)


def class_subspaces(traj: store.Trajectory) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The class subspaces (D, r_k) of the run's recorded mixture (module docstring), their
    components' means (D,) and names."""
    from spectra.studies.mixtures import recorded_mixture
    from spectra.studies.phases import recorded_config

    kind, config = recorded_config(traj)
    if kind != "gmm":
        raise SpectraError(f"{traj.path}: --reference classes needs a run of a gmm spec (or of a network "
                           f"trained on one); its model records {kind or 'no'} data")
    theory = recorded_mixture(config, f"{traj.path} model_config")
    bases = []
    for k in range(theory.n_components):
        e = theory.eigenvalues[k]
        top = e >= e.max() * (1 - 1e-9) if theory.class_rank(k) is not None else e > 0
        bases.append(theory.bases[k][:, top])
    return bases, list(theory.means), [f"class {k}" for k in range(theory.n_components)]


def pca_subspace(samples: np.ndarray, rank: int) -> np.ndarray:
    """The top-`rank` principal directions (D, rank) of samples (n, *shape), centred."""
    x = samples.reshape(len(samples), -1).astype(np.float64)
    if len(x) < 2:
        raise SpectraError("--reference pca needs at least two samples")
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    if rank > vt.shape[0]:
        raise SpectraError(f"--rank {rank} exceeds the {vt.shape[0]} principal components of "
                           f"{len(x)} samples")
    return vt[:rank].T


def references(traj: store.Trajectory, reference: str, rank: int | None, data: str | None
               ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The reference subspaces, each (D, r), the points they pass through (D,) (a class's mean,
    the samples' mean, or 0 for a given basis), and their names."""
    dim = math.prod(traj["x0"].shape[1:])
    if reference != "pca" and (rank is not None or data is not None):
        raise SpectraError("--rank and --data apply to --reference pca only")
    if reference == "classes":
        return class_subspaces(traj)
    if reference == "pca":
        samples = load_array(data) if data is not None else traj["x0"]
        if math.prod(samples.shape[1:]) != dim:
            raise SpectraError(f"--data {data}: samples of {math.prod(samples.shape[1:])} values, the "
                               f"run's have {dim}")
        centre = samples.reshape(len(samples), -1).mean(0)
        bases, centres, names = [pca_subspace(samples, rank or 1)], [centre], [f"PCA top {rank or 1}"]
    else:
        path = Path(reference)
        if path.suffix != ".npy":
            raise SpectraError(f"--reference must be classes, pca or a .npy basis, got {reference!r}")
        given = load_array(str(path))
        basis = given[None] if given.ndim == 2 else given
        if basis.ndim != 3 or basis.shape[1] != dim or basis.shape[2] < 1:
            raise SpectraError(f"{path}: a basis must be (D, r) or (B, D, r) with D = {dim}, "
                               f"got {given.shape}")
        bases, names = list(basis), [f"{path.name}[{i}]" for i in range(len(basis))]
        centres = [np.zeros(dim)] * len(bases)
    for b, name in zip(bases, names, strict=True):
        if not np.all(np.isfinite(b)) or np.linalg.matrix_rank(b) < b.shape[1]:
            raise SpectraError(f"reference {name}: its columns are not finite and independent")
    return bases, centres, names


def angles_of(vectors: np.ndarray, done: np.ndarray, bases: list[np.ndarray], k: int) -> np.ndarray:
    """Largest principal angle (N, T, B) between the span of the top-k right singular vectors
    (vectors (N, T, V, D)) and each reference; NaN where the Jacobian was not computed."""
    n, t = done.shape
    out = np.full((n, t, len(bases)), np.nan)
    for a in range(n):
        for i in range(t):
            if done[a, i]:
                top = vectors[a, i, :k].T
                out[a, i] = [principal_angles(top, b)[0] for b in bases]
    return out


def own_references(x0: np.ndarray, bases: list[np.ndarray], centres: list[np.ndarray]) -> np.ndarray:
    """Each anchor's own reference (N,): the one whose affine subspace c_b + span(B_b) lies
    nearest the anchor, ||(I - Q_b Q_b^T)(x0 - c_b)|| for an orthonormal basis Q_b (a mixture
    point's own class); a property of the data, not of the Jacobian."""
    flat = x0.reshape(len(x0), -1)
    residuals = []
    for b, c in zip(bases, centres, strict=True):
        q, z = scipy.linalg.orth(b), flat - c
        residuals.append(np.linalg.norm(z - (z @ q) @ q.T, axis=1))
    return np.argmin(np.stack(residuals, axis=1), axis=1)


def study(run: str | Path, out_dir: str | Path, reference: str = "classes", k: int | None = None,
          rank: int | None = None, data: str | None = None, fmt: str = "png", dpi: int = plot.DPI
          ) -> dict[str, Any]:
    """`spectra angles`: DIR/metrics.json (kind `angles`) and the figure; returns the metrics."""
    dpi = check_dpi(dpi)
    figure_names(fmt)  # the format checked
    traj = store.load(run)
    if "right_vectors" not in traj:
        raise SpectraError(f"{run} holds no singular vectors: run spectra estimate with --save-vectors V")
    vectors, done = traj["right_vectors"], traj["done"].astype(bool)
    if not np.all(np.isfinite(vectors[done])):
        raise SpectraError(f"{run} is a damaged run file (non-finite singular vectors marked done; "
                           "spectra estimate --resume computes them again)")
    kept = vectors.shape[2]
    bases, centres, ref_names = references(traj, reference, rank, data)
    if k is None:  # the classes' rank (d for MoLRG), else every vector kept
        k = min(kept, min(b.shape[1] for b in bases)) if reference == "classes" else kept
    if not 1 <= k <= kept:
        raise SpectraError(f"--k {k}: the run keeps {kept} singular vectors per Jacobian")
    block = traj.attrs.get("block_size") or 1
    if traj.attrs.get("method_used") == "topk" and block < k:
        warnings.warn(f"{run} ran top-k with blocks of {block} < k = {k}: it can miss copies of a value "
                      "repeated more than that (exact mixtures repeat theirs), and the subspaces with "
                      "them; --block-size at least the multiplicity, or a dense method, finds every copy",
                      stacklevel=2)
    out = output_folder(Path(out_dir), (METRICS, f"{FIGURES[0]}.{fmt}"), "angles")
    largest = angles_of(vectors, done, bases, k)  # (N, T, B)
    own = own_references(traj["x0"], bases, centres)
    to_own = largest[np.arange(len(own)), :, own]  # (N, T)
    metrics = {
        "format": METRICS_FORMAT, "kind": "angles", "run": str(run), "reference": reference,
        "references": [{"name": nm, "rank": int(b.shape[1])}
                       for nm, b in zip(ref_names, bases, strict=True)],
        "k": k, "own_reference": own.tolist(),
        "times": [{"t": float(traj["t"][i]), "tau": float(traj["tau"][i]),
                   "largest_angle_own": _median(to_own[:, i]),
                   "largest_angle": [_median(largest[:, i, b]) for b in range(len(bases))]}
                  for i in range(len(traj["t"]))],
        "largest_angle_per_anchor": [[_float(v) for v in row] for row in to_own],
    }
    figure = _figure(out / f"{FIGURES[0]}.{fmt}", traj["tau"], to_own, k, reference, dpi)
    metrics["figures"] = [figure.name]
    tmp = out / (METRICS + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / METRICS)
    return metrics


def _float(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def _median(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def _figure(path: Path, tau: np.ndarray, to_own: np.ndarray, k: int, reference: str, dpi: int) -> Path:
    """The largest principal angle to each anchor's own reference against tau (anchors thin,
    the median thick)."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    order = np.argsort(tau)
    for row in to_own:
        ax.plot(tau[order], np.degrees(row[order]), color="tab:blue", alpha=0.25, linewidth=0.8)
    median = np.array([np.nan if (m := _median(to_own[:, i])) is None else m for i in range(len(tau))])
    ax.plot(tau[order], np.degrees(median[order]), color="tab:blue", linewidth=2,
            label="median over anchors")
    ax.set_xscale("log")
    ax.set_xlabel(r"$\tau = \sigma^2/\alpha^2$")
    ax.set_ylabel("largest principal angle (degrees)")
    ax.set_ylim(-2, 92)
    ax.set_title(f"top-{k} right singular subspace vs its own reference ({reference})")
    ax.legend()
    return plot.save(fig, path, dpi)
