"""The phases study: hold a measured run against the linear theory: `spectra compare-theory`,
`spectra theory`, `spectra plot` (docs/cli.md; theory.md 3.2-3.4).

The theory is chosen in this order: `--manifold SPEC` (a gaussian linear-manifold spec), `--data
SPEC` (the Gaussian-equivalent theory of that data's covariance: an array file of samples, or a
model spec whose distribution is known), or what the run itself records (an analytic gaussian
model knows its manifold; a gmm spec, or a network trained on one, gets the exact mixture theory
of spectra.studies.mixtures). Measured spectra are normalized (spectra.analysis) and compared on the
run's own tau grid; predictions depend on tau alone, so any schedule works.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spectra import analysis, dimensions, hdf5, plot, store
from spectra.errors import SpectraError, first_line
from spectra.limits import require_memory
from spectra.lock import locked
from spectra.names import DEFAULT_RESOLUTION, TARGETS
from spectra.outputs import check_folder, check_replaceable, make_folder
from spectra.spec_toml import load_manifold, manifold_from_table
from spectra.studies import mixtures
from spectra.theory.mixture import MixtureTheory
from spectra.theory.prediction import LinearTheory

THEORY_FORMAT = "spectra-theory"
METRICS_FORMAT = "spectra-metrics"
METRICS = "metrics.json"
#: the figures' names, less the suffix of their format (plot.FORMATS)
FIGURES = ("spectrum", "trajectories", "gaps")


def figure_names(fmt: str) -> tuple[str, ...]:
    if fmt not in plot.FORMATS:
        raise SpectraError(f"--format must be one of {', '.join(plot.FORMATS)}, got {fmt!r}")
    return tuple(f"{name}.{fmt}" for name in FIGURES)


def check_dpi(dpi: int) -> int:
    if not 10 <= dpi <= 2000:
        raise SpectraError(f"--dpi must be between 10 and 2000, got {dpi}")
    return int(dpi)


@dataclass
class Comparison:
    """What compare-theory computed: the metrics (metrics.json's content) and the arrays of
    the run file's theory/ group."""

    metrics: dict[str, Any]
    arrays: dict[str, np.ndarray]
    figures: list[Path]


def check_resolution(delta: float) -> float:
    if not 0 < delta < 1:
        raise SpectraError(f"--resolution must be between 0 and 1, got {delta}")
    return float(delta)


# --- choosing the theory ---------------------------------------------------------------------
def theory_for_run(traj: store.Trajectory, manifold: str | None = None, data: str | None = None
                   ) -> tuple[LinearTheory | MixtureTheory, dict[str, Any]]:
    """The theory for a run and a description of where it came from (see module docstring)."""
    if manifold and data:
        raise SpectraError("give --manifold or --data, not both")
    if manifold:
        theory = LinearTheory.from_manifold(load_manifold(manifold))
        source = {"source": "manifold", "spec": str(manifold)}
    elif data:
        theory, source = _data_theory(data), {"source": "data", "spec": str(data)}
    else:
        theory, source = _recorded_theory(traj), {"source": "run", "spec": traj.attrs.get("model", "")}
    dim = math.prod(traj["x0"].shape[1:])
    if theory.ambient_dim != dim:
        raise SpectraError(
            f"the theory has dimension D = {theory.ambient_dim} but the run's model has D = {dim}"
        )
    return theory, {**source, **theory.description, "ambient_dim": theory.ambient_dim, "m": theory.m}


def recorded_config(traj: store.Trajectory) -> tuple[str | None, dict[str, Any]]:
    """The kind and table of the data a run's model records: its own analytic spec, or the data
    spec a `spectra train` network learned; (None, {}) when it records none."""
    try:
        config = json.loads(traj.attrs.get("model_config") or "{}")
    except json.JSONDecodeError:
        config = {}
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind == "trained":  # a `spectra train` network: the theory of the data it learned
        train = config.get("train")
        config = train.get("data_spec") if isinstance(train, dict) else None
        kind = config.get("kind") if isinstance(config, dict) else None
    return (kind, config) if isinstance(config, dict) and isinstance(kind, str) else (None, {})


def _recorded_theory(traj: store.Trajectory) -> LinearTheory | MixtureTheory:
    kind, config = recorded_config(traj)
    if kind == "gaussian":
        table = {k: v for k, v in config.items() if k != "spec_file"}
        return LinearTheory.from_manifold(manifold_from_table(table, f"{traj.path} model_config"))
    if kind == "gmm":  # a mixture: the exact prediction at the run's points (studies.mixtures)
        return mixtures.recorded_mixture(config, f"{traj.path} model_config")
    raise SpectraError(
        f"{traj.path} does not record the data of its model (model kind {kind or 'unknown'!r}): "
        "pass --manifold SPEC or --data SPEC"
    )


def _data_theory(spec: str) -> LinearTheory:
    """Gaussian-equivalent theory of a data spec: samples in an array file, or a model spec
    whose data distribution is known (the exact covariance of a linear manifold or mixture)."""
    from spectra.arrays import data_file, load_array

    path = data_file(spec)[0]
    if path.suffix in (".npy", ".npz", ".h5", ".hdf5"):
        x = load_array(spec)
        n, dim = len(x), int(np.prod(x.shape[1:]))
        if n <= dim:
            raise SpectraError(
                f"--data {spec}: {n} samples cannot estimate a covariance in D = {dim} "
                f"(its rank would be at most {n - 1}); give more than D samples"
            )
        return LinearTheory.from_samples(x)
    if path.suffix == ".toml":
        from spectra.models import GaussianMixture, load_model

        model = load_model(spec)
        if isinstance(model, GaussianMixture):
            return LinearTheory(np.linalg.eigvalsh(model.covariance()), None,
                                {"kind": "gaussian-equivalent", "model": model.config().get("kind")})
    raise SpectraError(
        f"--data {spec}: expected an array file (.npy, .npz, .h5) of samples or an analytic .toml spec"
    )


# --- the comparison --------------------------------------------------------------------------
def compare(run: str | Path, out_dir: str | Path | None = None, manifold: str | None = None,
            data: str | None = None, resolution: float = DEFAULT_RESOLUTION, fmt: str = "png",
            dpi: int = plot.DPI) -> Comparison:
    """Compare a run with its theory: write DIR/metrics.json and the figures (in format `fmt` at
    `dpi`), and the theory/ group into the run file (atomically, measured data untouched)."""
    delta = check_resolution(resolution)
    names, dpi = figure_names(fmt), check_dpi(dpi)
    run = Path(run)
    traj = store.load(run)
    check_normalizable(traj)
    theory, source = theory_for_run(traj, manifold, data)
    out = _out_dir(run, out_dir, "theory", (METRICS, *names))
    target = traj.attrs["target"]
    tau, alpha, sigma, t = traj["tau"], traj["alpha"], traj["sigma"], traj["t"]
    mu, done = measured_spectrum(traj)
    median = analysis.median_spectrum(mu)
    grid = density_grid()
    mixture_rows = None
    if isinstance(theory, MixtureTheory):
        held = mixtures.hold(theory, traj, mu, median, delta)
        mu, median, predicted, per_anchor_predicted = held.mu, held.median, held.predicted, held.per_anchor
        phases, mixture_rows, arrays = held.phases, held.rows, held.arrays
        predicted_labels, measured_labels = held.labels
    else:
        predicted = per_anchor_predicted = theory.eigenvalues(tau)
        phases = {"predicted": theory.phases(delta), "measured": analysis.measured_phases(tau, median, delta)}
        predicted_labels = theory.phase_labels(tau, delta)
        measured_labels = analysis.phase_labels(median, delta, phases["measured"]["manifold_gap_index"])
        arrays = {"tau": tau, "eigenvalues": predicted,
                  "singular_values": theory.singular_values(alpha, sigma, target),
                  "density_grid": grid, "density": theory.density(tau, grid), "atom": theory.atom(tau)}

    per_anchor_dim = analysis.dimension(mu, delta)  # (N, T)
    median_dim = analysis.dimension(median, delta)
    predicted_dim = analysis.dimension(predicted, delta)
    distances = analysis.spectrum_distance(mu, per_anchor_predicted)  # (N, T)
    times = []
    for ti in range(len(tau)):
        have = done[:, ti]
        times.append({
            "t": float(t[ti]), "tau": float(tau[ti]), "anchors_done": int(have.sum()),
            "measured_dimension": _dim(median_dim[ti]) if have.any() else None,
            "measured_dimension_per_anchor": [_dim(d) if h else None
                                              for d, h in zip(per_anchor_dim[:, ti], have, strict=True)],
            "predicted_dimension": _dim(predicted_dim[ti]),
            "spectrum_distance": float(np.nanmax(distances[have, ti])) if have.any() else None,
            "measured_phase": measured_labels[ti], "predicted_phase": predicted_labels[ti],
        })
        if mixture_rows is not None:
            times[-1]["mixture"] = mixture_rows[ti]
    metrics = {"format": METRICS_FORMAT, "run": str(run), "target": target, "resolution": delta,
               "theory": source, "times": times, "phases": phases}

    with locked(run):
        write_theory_group(run, arrays, {"source": json.dumps(source), "resolution": delta,
                                         "phases": json.dumps(phases["predicted"])})

    label = f"({run.name}, {target}; theory: {source['source']})"
    figures = _figures(out, names, dpi, tau, mu, median, delta, phases["measured"], label, predicted,
                       phases["predicted"])
    metrics["figures"] = [f.name for f in figures]
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return Comparison(metrics, arrays, figures)


def plot_run(run: str | Path, out_dir: str | Path | None = None,
             resolution: float = DEFAULT_RESOLUTION, fmt: str = "png", dpi: int = plot.DPI) -> list[Path]:
    """The trajectory figures of a run, without theory (`spectra plot`), in format `fmt`."""
    delta = check_resolution(resolution)
    names, dpi = figure_names(fmt), check_dpi(dpi)
    run = Path(run)
    traj = store.load(run)
    check_normalizable(traj)
    out = _out_dir(run, out_dir, "plots", names)
    target = traj.attrs["target"]
    tau = traj["tau"]
    mu, _ = measured_spectrum(traj)
    median = analysis.median_spectrum(mu)
    measured = analysis.measured_phases(tau, median, delta)
    return _figures(out, names, dpi, tau, mu, median, delta, measured, f"({run.name}, {target})")


def _figures(out: Path, names: tuple[str, ...], dpi: int, tau: np.ndarray, mu: np.ndarray,
             median: np.ndarray, delta: float, measured_phases: dict, label: str,
             predicted: np.ndarray | None = None, predicted_phases: dict | None = None) -> list[Path]:
    """The spectrum, trajectories and gaps figures as `names` (the gaps drawn: every
    intermediate and manifold gap either side found), with the theory when `predicted` is given."""
    found = [measured_phases] + ([predicted_phases] if predicted_phases else [])
    indices = sorted({g["index"] for ph in found for g in ph["intermediate_gaps"]}
                     | {ph["manifold_gap_index"] for ph in found if ph["manifold_gap_index"]})
    return [
        plot.spectra_at_times(out / names[0], tau, mu, predicted, label, dpi),
        plot.trajectories(out / names[1], tau, median, predicted, predicted_phases,
                          measured_phases, label, dpi),
        plot.gap_width_curves(out / names[2], tau, median, delta, indices, predicted, label, dpi),
    ]


def measured_spectrum(traj: store.Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """The run's normalized spectra mu (N, T, D) at absolute positions (NaN where not computed,
    including every (anchor, time) whose `done` is false) and the done mask (N, T)."""
    check_normalizable(traj)
    done = traj["done"].astype(bool)
    if not done.any():
        raise SpectraError(f"{traj.path} has no finished Jacobians yet (run spectra estimate --resume)")
    sv = np.array(traj["singular_values"], dtype=np.float64)
    sv[~done] = np.nan
    dim = math.prod(traj["x0"].shape[1:])
    mu = analysis.normalized_spectrum(sv, traj.attrs["target"], traj["alpha"], traj["sigma"], dim)
    return mu, done


def check_normalizable(traj: store.Trajectory) -> None:
    """Refuse a run whose target has no normalized spectrum (a feature's Jacobian)."""
    target = traj.attrs["target"]
    if target not in TARGETS:
        raise SpectraError(f"{traj.path} holds the Jacobian of {target}, which has no normalized spectrum "
                           "and no theory; read its singular values with spectra.load")


def _dim(value: int) -> int | None:
    return int(value) if value > 0 else None


def _out_dir(run: Path, out_dir: str | Path | None, suffix: str, names: tuple[str, ...]) -> Path:
    """The output folder of a run's comparison or plots: `out_dir`, or RUN-suffix beside the run
    (output_folder)."""
    return output_folder(Path(out_dir) if out_dir is not None else run.with_name(f"{run.stem}-{suffix}"),
                         names)


def output_folder(out: Path, names: tuple[str, ...], kind: str | None = None) -> Path:
    """A study's output folder (made if missing), once none of the files `names` to be written
    there is someone else's: a .json name may replace only spectra's metrics of this `kind`
    (own_metrics), any other only a figure matplotlib wrote."""
    make_folder(out)
    for name in names:
        own = (lambda p: own_metrics(p, kind)) if name.endswith(".json") else plot.check_own_figure
        check_replaceable(out / name, own, "spectra output")
    return out


def own_metrics(path: Path, kind: str | None = None) -> None:
    """A metrics file of spectra's of this `kind` (None: compare-theory's, which has no kind; or,
    before the format key, the run and times that its metrics.json holds): one command never
    replaces another's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise SpectraError("not JSON") from None
    legacy = (kind is None and isinstance(data, dict) and "format" not in data
              and {"run", "times"} <= set(data))
    if not (isinstance(data, dict) and data.get("format") == METRICS_FORMAT or legacy):
        raise SpectraError(f"no format {METRICS_FORMAT!r}")
    if not legacy and data.get("kind") != kind:
        raise SpectraError(f"it holds {data.get('kind') or 'compare-theory'} metrics")


def density_grid(n: int = 1000) -> np.ndarray:
    """n midpoints of a uniform grid on (-1, 0), where normalized eigenvalues live."""
    return -1 + (np.arange(n) + 0.5) / n


# --- writing ---------------------------------------------------------------------------------
#: the attributes through which HDF5 dimension scales refer to each other (by file address)
DIMENSION_ATTRS = ("DIMENSION_LIST", "REFERENCE_LIST")

def write_theory_group(run: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Replace the run file's theory/ group atomically: copy every other object and attribute into
    a new file beside it, add the group, and rename it over the run. A crash at any point leaves
    the run as it was (and at most a stray temporary file)."""
    with store.open_checked(run) as src, store.atomic_h5(run, ".theory.tmp") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        scaled = False
        for name in src:
            if name == "theory":
                continue
            if not isinstance(src.get(name, getlink=True), h5py.HardLink):
                raise SpectraError(f"{run}: {name!r} is a link; spectra copies only the run's own objects")
            try:
                if isinstance(src[name], h5py.Dataset) and h5py.h5ds.is_scale(src[name].id):
                    scaled = True  # the scales are made anew below: a copy's references dangle
                    continue
                src.copy(src[name], dst, name=name)
            except RuntimeError as exc:  # HDF5 reading damaged metadata (write errors are OSErrors)
                raise SpectraError(f"{run} is a damaged HDF5 file: {first_line(exc)}") from None
            for key in DIMENSION_ATTRS:
                if key in dst[name].attrs:
                    del dst[name].attrs[key]
        if scaled:
            dimensions.attach(dst)
        group = dst.create_group("theory")
        for name, arr in arrays.items():
            group.create_dataset(name, data=arr)
        for key, value in attrs.items():
            group.attrs[key] = value


def theory_file(manifold: str, out: str | Path, tau_min: float = 1e-4, tau_max: float = 1e3,
                n_tau: int = 200, n_grid: int = 1000, resolution: float = DEFAULT_RESOLUTION,
                overwrite: bool = False) -> Path:
    """`spectra theory`: predictions for a manifold spec on a log tau grid, written to an HDF5
    file (datasets tau, eigenvalues, density_grid, density, atom; attribute phases)."""
    delta = check_resolution(resolution)
    if not (0 < tau_min < tau_max) or not math.isfinite(tau_max):
        raise SpectraError(f"need 0 < --tau-min < --tau-max, got {tau_min} and {tau_max}")
    if n_tau < 1 or n_grid < 2:
        raise SpectraError("--n-tau must be at least 1 and --n-grid at least 2")
    require_memory(3 * 8 * n_tau * n_grid, f"--n-tau {n_tau} x --n-grid {n_grid} densities")
    out = check_folder(out)
    theory = LinearTheory.from_manifold(load_manifold(manifold))
    require_memory(4 * 8 * n_tau * (theory.ambient_dim + n_grid),
                   f"--n-tau {n_tau} predictions at D = {theory.ambient_dim}")
    tau = np.geomspace(tau_min, tau_max, n_tau)
    grid = density_grid(n_grid)
    with locked(out):
        if out.exists() and not overwrite:
            raise SpectraError(f"{out} exists (pass --overwrite to replace it)")
        check_replaceable(out, _own_theory_file, "spectra theory file")
        _write_theory(out, manifold, delta, theory, tau, grid)
    return out


def _write_theory(out: Path, manifold: str, delta: float, theory: LinearTheory, tau: np.ndarray,
                  grid: np.ndarray) -> None:
    """The theory file's datasets and attributes, written atomically."""
    with store.atomic_h5(out) as f:
        f.attrs.update({"format": THEORY_FORMAT, "format_version": 1, "manifold": str(manifold),
                        "resolution": delta, "phases": json.dumps(theory.phases(delta)),
                        "description": json.dumps(theory.description)})
        f["tau"] = tau
        f["eigenvalues"] = theory.eigenvalues(tau)
        f["density_grid"] = grid
        f["density"] = theory.density(tau, grid)
        f["atom"] = theory.atom(tau)


def _own_theory_file(path: Path) -> None:
    """`spectra theory`'s own HDF5 files."""
    with hdf5.open_file(path) as f:
        fmt = store._decode(f.attrs.get("format", ""))
    if fmt != THEORY_FORMAT:
        raise SpectraError(f"format {fmt or 'missing'!r}")
