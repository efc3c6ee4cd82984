"""The memorization study's commands: `spectra sample`, `spectra memorization`, `spectra crossover`
and `spectra dataset` (registered on the group by spectra_cli.main). Like every command, each
imports the library it needs once its options are checked."""

from __future__ import annotations

import json

import click
from spectra_cli.options import SEED, float_list, load_options

from spectra.errors import SpectraError
from spectra.schedules import SCHEDULE_NAMES
from spectra.sweep.options import MAX_INT


@click.command("sample")
@click.option("--model", default=None, help="Model spec, as for estimate [default: the shipped demo].")
@click.option("--n", type=click.IntRange(1, MAX_INT), required=True, help="Number of samples.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Samples (.npy, shape (N, *shape)); the steps are recorded beside it in OUT.json.")
@click.option("--sampler", type=click.Choice(["heun", "ancestral"]), default="heun", show_default=True,
              help="Probability-flow ODE with Heun steps (EDM) or the ancestral (DDPM) sampler.")
@click.option("--steps", type=click.IntRange(2, 100000), default=32, show_default=True,
              help="Noise levels (EDM's rho = 7 spacing over the schedule's range).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--t-min", type=float, default=None, help="Smallest time [default: schedule's].")
@click.option("--t-max", type=float, default=None, help="Largest time [default: schedule's].")
@load_options
@click.option("--overwrite", is_flag=True, help="Replace existing samples written by spectra sample.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sample_cmd(model: str | None, n: int, out: str, sampler: str, steps: int, seed: int,
               t_min: float | None, t_max: float | None, overwrite: bool, quiet: bool, **load) -> None:
    """Draw samples from any model spectra loads."""
    from spectra.sample_files import write_samples

    path = write_samples(out, model, n, sampler=sampler, steps=steps, seed=seed, t_min=t_min, t_max=t_max,
                         overwrite=overwrite, progress=not quiet, **load)
    click.echo(f"wrote {path} and {path.with_suffix('.json').name}")


@click.command("memorization")
@click.option("--model", default=None, help="Model spec, as for estimate [default: the shipped demo].")
@click.option("--train-data", default=None, help="Training set (.npy/.npz/.h5, FILE:KEY) [default: "
              "the checkpoint's own points, or an empirical model's].")
@click.option("--n", type=click.IntRange(1, MAX_INT), default=100, show_default=True,
              help="Generated samples.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json and the figures.")
@click.option("--sampler", type=click.Choice(["heun", "ancestral"]), default="heun", show_default=True)
@click.option("--steps", type=click.IntRange(2, 100000), default=32, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--threshold", type=float, default=1 / 3, show_default="1/3",
              help="Nearest / second-nearest distance ratio below which a sample is memorized.")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png",
              show_default=True, help="Figure format.")
@click.option("--dpi", type=int, default=150, show_default=True, help="Figure resolution.")
@load_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def memorization_cmd(model: str | None, train_data: str | None, n: int, out: str, sampler: str,
                     steps: int, seed: int, threshold: float, fmt: str, dpi: int, quiet: bool,
                     **load) -> None:
    """Sample a model and measure how many samples reproduce a training point."""
    from spectra.studies.memorization import study

    m = study(model, out, n, train_data, steps, sampler, seed, fmt, dpi, threshold, progress=not quiet,
              **load)
    click.echo(f"memorized fraction {m['memorized_fraction']:.3f} of {m['n_generated']} samples "
               f"(median ratio {m['median_ratio']:.3f}; {m['n_train']} training points)")
    click.echo(f"wrote {out}/metrics.json and {', '.join(m['figures'])}")


@click.command("crossover")
@click.option("--schedule", type=click.Choice(SCHEDULE_NAMES), default="vp-sqrt", show_default=True)
@click.option("--times", callback=float_list, default=None,
              help="The time grid [default: --n-times evenly spaced from --t-max down to --t-min].")
@click.option("--n-times", type=click.IntRange(2, 10**6), default=26, show_default=True)
@click.option("--t-min", type=float, default=None,
              help="Grid start [default: 0.001 for vp-sqrt (Buchanan et al.'s grid), else the schedule's].")
@click.option("--t-max", type=float, default=None,
              help="Grid end [default: 0.999 for vp-sqrt, else the schedule's].")
@click.option("--weights", callback=float_list, default=None,
              help="lambda(t) at each time of the grid [default: uniform].")
@click.option("--variance", type=float, default=1.0, show_default=True,
              help="s_*^2, the clusters' variance.")
@click.option("--C", "c_values", callback=float_list, default="1,1.5,2", show_default=True,
              help="The memorizing loss constant(s), in [1, 2].")
@click.option("--n-train", type=click.IntRange(1, MAX_INT), default=None,
              help="Also give M* = N M*/N for this many training points.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def crossover_cmd(schedule: str, times: list[float] | None, n_times: int, t_min: float, t_max: float,
                  weights: list[float] | None, variance: float, c_values: list[float],
                  n_train: int | None, as_json: bool) -> None:
    """Where memorizing M of N points starts to beat generalizing (Buchanan et al. 2025)."""
    import numpy as np

    from spectra.schedules import Schedule
    from spectra.theory.memorization import critical_fraction

    if any(not 1 <= c <= 2 for c in c_values):
        raise SpectraError(f"--C must be in [1, 2] (Buchanan et al.'s bounds), got {c_values}")
    sched = Schedule(schedule)
    lo, hi = (0.001, 0.999) if schedule == "vp-sqrt" else sched.default_range
    lo, hi = lo if t_min is None else t_min, hi if t_max is None else t_max
    grid = np.asarray(times if times is not None else np.linspace(hi, lo, n_times))
    if times is None and sched.integer_times:
        grid = np.unique(np.round(grid))[::-1]
    sched.validate(grid)
    try:
        fractions = critical_fraction(sched.alpha(grid), sched.sigma(grid), variance,
                                      np.asarray(c_values), None if weights is None else np.asarray(weights))
    except ValueError as exc:
        raise SpectraError(str(exc)) from None
    rows = [{"C": c, "critical_fraction": float(f), **({"critical_count": float(f) * n_train}
                                                      if n_train else {})}
            for c, f in zip(c_values, np.atleast_1d(fractions), strict=True)]
    if as_json:
        click.echo(json.dumps({"schedule": schedule, "times": grid.tolist(), "variance": variance,
                               "weights": weights, "crossover": rows}, indent=2))
        return
    click.echo(f"{len(grid)} times of {schedule} in [{grid.min():g}, {grid.max():g}], s_*^2 = {variance:g}, "
               f"{'uniform' if weights is None else 'given'} weighting")
    for row in rows:
        extra = f", M* = {row['critical_count']:.1f} of N = {n_train}" if n_train else ""
        click.echo(f"C = {row['C']:g}: M*/N = {row['critical_fraction']:.3f}{extra}")


@click.command("dataset")
@click.argument("name", type=click.Choice(["digits"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Array file (.npz with arrays x and labels).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file written by spectra dataset.")
def dataset_cmd(name: str, out: str, overwrite: bool) -> None:
    """Write a real dataset that ships offline (scikit-learn's 8 x 8 digits, in [-1, 1])."""
    from spectra.sample_files import write_dataset

    path, shape = write_dataset(name, out, overwrite)
    click.echo(f"wrote {path}: x {shape}, labels")
