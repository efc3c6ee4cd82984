"""compare-theory for runs of Gaussian-mixture data (theory.md 3.1, 3.6): the exact finite-D
prediction at the run's own points (spectra.theory.mixture), the confident-regime levels and the
class gap, and the mixture's phases.

A run's model records its data: an analytic `gmm` spec, or a `spectra train` network whose data
spec is one. Its prediction is the exact posterior-mean Jacobian at every (anchor, time) the run
evaluated (alpha x0 at --at clean; the saved or the run's seeded noisy points at --at noisy), its
spectra normalized as the measured ones are (spectra.analysis). The phases, in generation order
(tau decreasing): `trivial` (every value within Delta of -1), `manifold coverage`, `class
commitment` (the class gap at index d visible: the posterior has picked a class and its
subspace stands above the others) and `consolidation` (the manifold gap visible, the class gap
closed again as xi -> 1 for tau << delta^2).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectra import analysis, store
from spectra.errors import SpectraError
from spectra.theory.mixture import CONFIDENT, MixtureTheory, target_singular_values

#: the mixture presets whose tables name no file (a run's recorded table is rebuilt from them)
SELF_CONTAINED = ("molrg", "isotropic", None)


def recorded_mixture(table: dict[str, Any], where: str) -> MixtureTheory:
    """The MixtureTheory of a run's recorded `gmm` table (presets molrg and isotropic, or
    explicit components; a templates preset may name a file, which a run's record never opens)."""
    from spectra.models.specs import model_from_table

    if table.get("preset") not in SELF_CONTAINED and isinstance(table.get("templates"), str):
        raise SpectraError(f"{where} names its templates by file, which compare-theory does not open: "
                           "pass --data SPEC")
    table = {k: v for k, v in table.items() if k != "spec_file"}
    model = model_from_table(table, Path(where), kinds=("gmm",))
    desc = {"kind": "mixture", "preset": table.get("preset"), "components": len(model.weights)}
    return MixtureTheory(model.weights, model.means, model.bases, model.eigenvalues, desc)


def run_points(traj: store.Trajectory) -> np.ndarray:
    """The flat points (N, T, D) at which the run evaluated its Jacobians: its saved points, or
    alpha x0 (--at clean), or alpha x0 + sigma eps with the run's seeded eps (--at noisy;
    spectra.sweep.inputs.points_at)."""
    x0 = traj["x0"]
    n, dim = len(x0), math.prod(x0.shape[1:])
    if "points" in traj:
        return traj["points"].reshape(n, len(traj["t"]), dim)
    flat = x0.reshape(n, 1, dim)
    points = traj["alpha"][None, :, None] * flat
    if traj.attrs.get("at") == "noisy":
        from spectra.sweep.inputs import SEED_NOISE, rng  # the run's own keyed draws (imports torch)

        seed = int(traj.attrs["seed"])
        eps = np.stack([np.stack([rng(seed, SEED_NOISE, a, ti).standard_normal(x0.shape[1:]).ravel()
                                  for ti in range(len(traj["t"]))]) for a in range(n)])
        points = points + traj["sigma"][None, :, None] * eps
    return points


@dataclass
class MixturePrediction:
    """What the mixture theory predicts for a run: normalized spectra per anchor (N, T, D) and
    their median (T, D), singular values of the target (T, D, the median over anchors), the
    posterior's confidence (N, T: the largest component weight) and its component (N, T)."""

    per_anchor: np.ndarray
    median: np.ndarray
    singular_values: np.ndarray
    confidence: np.ndarray
    component: np.ndarray


def signed_spectrum(traj: store.Trajectory) -> np.ndarray | None:
    """The run's normalized spectra (N, T, D) with their signs, from the eigenvalues of the
    Jacobians' symmetric parts (`sym_eigenvalues`, which dense runs keep): sigma^2 lambda (score),
    -sigma lambda (eps), alpha lambda - 1 (denoiser), sorted descending, NaN where not done; None
    when the run lacks them (top-k, or K < D). A mixture's sigma^2 J_score can have positive
    eigenvalues, which the singular values' mapping (analysis.normalized_spectrum) turns negative."""
    done = traj["done"].astype(bool)
    sym = np.array(traj["sym_eigenvalues"], dtype=np.float64)
    dim = math.prod(traj["x0"].shape[1:])
    if sym.shape[-1] != dim or not np.all(np.isfinite(sym[done])):
        return None
    alpha, sigma = traj["alpha"][None, :, None], traj["sigma"][None, :, None]
    target = traj.attrs["target"]
    mu = sigma**2 * sym if target == "score" else -sigma * sym if target == "eps" else alpha * sym - 1
    mu = -np.sort(-mu, axis=-1)
    mu[~done] = np.nan
    return mu


def predict(theory: MixtureTheory, traj: store.Trajectory, signed: bool) -> MixturePrediction:
    """The exact prediction at the run's points (run_points): normalized eigenvalues with their
    signs (`signed`, to compare with signed_spectrum), else mapped from the singular values as the
    run's own are (analysis.normalized_spectrum)."""
    points = run_points(traj)
    alpha, sigma, target = traj["alpha"], traj["sigma"], traj.attrs["target"]
    lam = theory.normalized_eigenvalues(points, alpha, sigma)
    sv = target_singular_values(lam, alpha, sigma, target)
    per_anchor = lam if signed else analysis.normalized_spectrum(sv, target, alpha, sigma, theory.ambient_dim)
    post = np.stack([theory.posterior(points[:, i], float(a), float(s))
                     for i, (a, s) in enumerate(zip(alpha, sigma, strict=True))], axis=1)
    return MixturePrediction(per_anchor, analysis.median_spectrum(per_anchor), np.median(sv, axis=0),
                             post.max(-1), post.argmax(-1))


def class_index(theory: MixtureTheory) -> int | None:
    """The index d of the class gap, when every component has one at the same index."""
    ranks = {theory.class_rank(k) for k in range(theory.n_components)}
    return ranks.pop() if len(ranks) == 1 else None


def per_time(theory: MixtureTheory, pred: MixturePrediction, median: np.ndarray, tau: np.ndarray
             ) -> list[dict[str, Any]]:
    """Each time's mixture metrics: the posterior's median confidence and the fraction of anchors
    where it is confident (>= CONFIDENT); the class gap at index d, predicted exactly (median over
    anchors), in the confident regime (zeta - xi for MoLRG) and measured (the median spectrum's);
    and the levels of alpha J_x0 (1 + mu) on the own class (index 0) and the next (index d),
    confident and measured."""
    d = class_index(theory)
    rows = []
    for ti, t in enumerate(tau):
        row: dict[str, Any] = {
            "confidence": float(np.median(pred.confidence[:, ti])),
            "confident_fraction": float(np.mean(pred.confidence[:, ti] >= CONFIDENT)),
            "class_gap_index": d,
        }
        if d is not None:
            k = int(np.bincount(pred.component[:, ti]).argmax())
            levels = theory.confident_levels([t], k)[0]
            row.update({
                "class_gap_predicted": _finite(pred.median[ti, d - 1] - pred.median[ti, d]),
                "class_gap_confident": _finite(levels[d - 1] - levels[d]),
                "class_gap_measured": _finite(median[ti, d - 1] - median[ti, d]),
                "levels_confident": [_finite(1 + levels[0]), _finite(1 + levels[d])],
                "levels_measured": [_finite(1 + median[ti, 0]), _finite(1 + median[ti, d])],
            })
        rows.append(row)
    return rows


def _finite(value: float) -> float | None:
    """A JSON number, or None (null) where the value was not measured (NaN)."""
    return float(value) if np.isfinite(value) else None


def phases(tau: np.ndarray, median: np.ndarray, delta: float, d: int | None) -> dict[str, Any]:
    """The phase boundaries of a median spectrum (analysis.measured_phases) and its class gap:
    the intermediate gap at index d ({index, tau_open, tau_max, tau_close, width_max}; None when
    it never shows)."""
    found = analysis.measured_phases(tau, median, delta)
    gap = next((g for g in found["intermediate_gaps"] if g["index"] == d), None) if d else None
    return {**found, "class_gap": gap}


def phase_labels(tau: np.ndarray, median: np.ndarray, delta: float, manifold_index: int | None,
                 d: int | None) -> list[str | None]:
    """The mixture phase at each time of a median spectrum (T, D) on the grid tau (T,): trivial,
    manifold coverage, class commitment or consolidation. `class commitment` where the gap at
    index d is visible; a visible manifold gap is `consolidation` once the class gap has shown at
    a larger tau (in generation order), and `manifold coverage` before (the union of the classes'
    subspaces emerging); else the linear labels (analysis.phase_labels)."""
    labels = analysis.phase_labels(median, delta, manifold_index)
    if d is None:
        return labels
    committed = False
    for i in np.argsort(-np.asarray(tau)):
        row = median[i]
        if labels[i] is None or labels[i] == "trivial":
            continue
        if row[d - 1] - row[d] > delta:
            labels[i], committed = "class commitment", True
        elif labels[i] == "consolidation" and not committed:
            labels[i] = "manifold coverage"
    return labels


@dataclass
class Held:
    """A mixture run held against its theory (hold): the measured spectra mu (N, T, D) and their
    median (T, D) (signed where the run allows), the predicted median and per-anchor spectra, the
    phases {predicted, measured}, the labels (predicted, measured), the per-time `mixture` rows
    and the arrays of the run's theory/ group."""

    mu: np.ndarray
    median: np.ndarray
    predicted: np.ndarray
    per_anchor: np.ndarray
    phases: dict[str, Any]
    labels: tuple[list[str | None], list[str | None]]
    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]


def hold(theory: MixtureTheory, traj: store.Trajectory, mu: np.ndarray, median: np.ndarray,
         delta: float) -> Held:
    """compare-theory's mixture part (module docstring): the signed spectra where the run keeps
    them (signed_spectrum; else mu and its median as given, with a warning), the exact prediction
    at the run's points, the phases and labels of both, and the per-time metrics."""
    signed = signed_spectrum(traj)
    if signed is not None:
        mu, median = signed, analysis.median_spectrum(signed)
    else:
        warnings.warn(f"{traj.path} keeps no signed eigenvalues (top-k, or --k below D): its mixture "
                      "spectra are compared through their singular values, which lose the sign of "
                      "positive normalized eigenvalues, and top-k with a block below a value's "
                      "multiplicity can miss copies of it (--block-size)",
                      stacklevel=3)
    tau = traj["tau"]
    pred = predict(theory, traj, signed is not None)
    d = class_index(theory)
    found = {"predicted": phases(tau, pred.median, delta, d), "measured": phases(tau, median, delta, d)}
    labels = (phase_labels(tau, pred.median, delta, found["predicted"]["manifold_gap_index"], d),
              phase_labels(tau, median, delta, found["measured"]["manifold_gap_index"], d))
    arrays = {"tau": tau, "eigenvalues": pred.median, "singular_values": pred.singular_values,
              "anchor_eigenvalues": pred.per_anchor, "confidence": pred.confidence}
    return Held(mu, median, pred.median, pred.per_anchor, found, labels,
                per_time(theory, pred, median, tau), arrays)
