"""Following a model through training (`spectra estimate --model SNAPSHOTS --out DIR`).

`spectra train --snapshot-every S` keeps slim checkpoints OUT-snapshots/step-NNNNNNNN.pt. For each
snapshot this runs the one estimate engine into DIR/step-NNNNNNNN.h5 (resumed where it exists),
then records against the training step (DIR/summary.json, DIR/summary.png):

* the dimension at the smallest tau: the position of the largest visible gap of the median
  normalized spectrum mu (spectra.analysis.dimension, as compare-theory measures it), and the count
  of mu above -1 + Delta, the directions the denoiser keeps (J_x0's singular values above
  Delta / alpha; docs/theory.md 3.5: a model that memorizes loses them, J_x0 -> 0), at the smallest
  tau and at every tau of the grid (a network's denoiser tends to the identity at the smallest
  noise levels, where its training signal vanishes, so the signature can show at larger tau);
* the memorized fraction of `generated` samples drawn from the snapshot (spectra.sampling, Heun)
  against its own training points (spectra.studies.memorization), where it has them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from spectra import analysis, plot, store
from spectra.checkpoint import STEP_FREE_OPTIONS, config_of, read_checkpoint
from spectra.errors import SpectraError
from spectra.models import load_model
from spectra.models.trained import TrainedScoreModel
from spectra.sampling import sample
from spectra.studies.memorization import memorized_fraction
from spectra.studies.phases import METRICS_FORMAT, check_resolution, measured_spectrum, output_folder
from spectra.sweep.estimate import estimate
from spectra.sweep.options import EstimateOptions

SUMMARY, FIGURE = "summary.json", "summary.png"


def snapshot_paths(spec: str) -> list[tuple[int, Path]] | None:
    """The snapshots a --model spec names, (training step, path) sorted by step: every .pt in a
    folder, or a comma-separated list of .pt files; None when the spec names one model."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(path.glob("*.pt"))
        if not found:
            raise SpectraError(f"{path} holds no .pt snapshots")
    elif "," in spec and all(p.strip().endswith(".pt") for p in spec.split(",")):
        found = [Path(p.strip()) for p in spec.split(",") if p.strip()]
    else:
        return None
    steps, runs = {}, {}
    for p in found:
        steps[p], runs[p] = _read(p)
    first = found[0]
    for p in found[1:]:
        if runs[p] != runs[first]:
            raise SpectraError(f"{p} and {first} come from different trainings (their data, network or "
                               "options differ): give the snapshots of one run")
    return sorted(((steps[p], p) for p in found), key=lambda sp: (sp[0], sp[1].name))


def _read(path: Path) -> tuple[int, dict[str, Any]]:
    """(the training step a snapshot records, what makes it part of one training run: its config
    less the options that never change a given step's weights)."""
    ck = read_checkpoint(path)
    config = config_of(ck, path)
    try:
        step = int(ck["step"])
    except (TypeError, ValueError):
        raise SpectraError(f"{path} is a damaged spectra checkpoint (step)") from None
    options = config.get("options")
    if isinstance(options, dict):
        config = {**config, "options": {k: v for k, v in options.items() if k not in STEP_FREE_OPTIONS}}
    return step, config


def follow(snapshots: list[tuple[int, Path]], out_dir: str | Path, opts: EstimateOptions,
           generated: int = 100, resolution: float = 0.1, progress: bool = True, command: str = "",
           seed: int = 0) -> dict[str, Any]:
    """Estimate every snapshot into DIR and write DIR/summary.json and DIR/summary.png; returns
    the summary (see the module docstring)."""
    delta = check_resolution(resolution)
    if generated < 0:
        raise SpectraError(f"--generated must be at least 0, got {generated}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpectraError(f"--out {out} must be a folder when --model names several snapshots")
    output_folder(out, (SUMMARY, FIGURE), "snapshots")
    stems = [path.stem for _, path in snapshots]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise SpectraError(f"two snapshots share the name {twice[0]} (their runs would be one file in {out})")
    rows = []
    for step, path in snapshots:
        # a run already there is resumed, which checks that it is this snapshot's, with these
        # options (and returns at once when it is complete)
        run = out / f"{path.stem}.h5"
        estimate(run, dataclasses.replace(opts, model=str(path)), resume=run.exists(), progress=progress,
                 command=command)
        rows.append(_row(step, path, run, delta, generated, seed))
    summary = {"format": METRICS_FORMAT, "kind": "snapshots", "resolution": delta,
               "generated": generated, "snapshots": rows}
    _figure(out / FIGURE, rows)
    tmp = out / f"{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / SUMMARY)
    return summary


def _row(step: int, path: Path, run: Path, delta: float, generated: int, seed: int) -> dict[str, Any]:
    traj = store.load(run)
    mu, _ = measured_spectrum(traj)
    tau = np.asarray(traj["tau"])
    first = int(np.argmin(tau))
    dim = int(analysis.dimension(analysis.median_spectrum(mu)[first], delta))
    kept = kept_directions(mu, delta)
    order = np.argsort(tau)
    row = {"snapshot": str(path), "step": step, "run": run.name, "tau": float(tau[first]),
           "dimension": dim if dim > 0 else None, "kept_directions": int(kept[first]),
           "taus": tau[order].tolist(), "kept_by_tau": kept[order].astype(int).tolist(),
           "memorized_fraction": None}
    model = load_model(str(path))
    if generated and isinstance(model, TrainedScoreModel) and model.train_points is not None \
            and len(model.train_points) >= 2:
        x = sample(model, generated, seed=seed).x
        row["memorized_fraction"] = memorized_fraction(x, model.train_points)
    return row


def kept_directions(mu: np.ndarray, delta: float) -> np.ndarray:
    """The directions the denoiser keeps at each time (T,): the count of values of the median
    normalized spectrum over anchors (mu (N, T, D)) above -1 + delta (theory.md 3.5)."""
    return np.sum(analysis.median_spectrum(mu) > -1 + delta, axis=-1)


def _figure(path: Path, rows: list[dict[str, Any]]) -> Path:
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(8.0, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    taus = np.asarray(rows[0]["taus"])
    shown = np.arange(0, max(1, (len(taus) + 1) // 2))  # the lower half of the grid in tau
    norm = LogNorm(taus[shown].min(), max(taus[shown].max(), taus[shown].min() * 1.0001))
    for i in shown:
        top.plot(steps, [r["kept_by_tau"][i] for r in rows], "o-", ms=3,
                 color=colormaps["viridis"](norm(taus[i])))
    fig.colorbar(ScalarMappable(norm, "viridis"), ax=top, label=r"$\tau$")
    top.set_ylabel(r"directions kept ($\mu > -1 + \Delta$)")
    fractions = [np.nan if r["memorized_fraction"] is None else r["memorized_fraction"] for r in rows]
    bottom.plot(steps, fractions, "o-", color="tab:red")
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_ylabel("memorized fraction")
    bottom.set_xlabel("training step")
    fig.suptitle("the spectral signature and memorization across training snapshots")
    return plot.save(fig, path)
