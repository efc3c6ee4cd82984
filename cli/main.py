"""The `spectra` command line: parses options, calls the library, prints.

Every user error (SpectraError, or a click usage error) ends as one line on stderr,
`error: ...`, and exit status 2. This module imports nothing heavy: each command imports the
library it needs (torch, matplotlib) once its options are checked, so that `spectra --help` and
errors on options answer at once.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import NoReturn

import click
from spectra_cli.angles import angles_cmd
from spectra_cli.options import SEED, float_list, shape_option
from spectra_cli.represent import represent_cmd
from spectra_cli.study import crossover_cmd, dataset_cmd, memorization_cmd, sample_cmd

from spectra.errors import SpectraError, first_line, os_error
from spectra.names import (
    DEFAULT_RENDEZVOUS_TIMEOUT,
    DEFAULT_RESOLUTION,
    FEATURE_PREFIX,
    METHODS,
    PARAMETERIZATIONS,
    TARGETS,
)
from spectra.schedules import SCHEDULE_NAMES
from spectra.sweep.options import MAX_INT, EstimateOptions, check_request
from spectra.version import __version__


class SpectraGroup(click.Group):
    """A click group whose errors are one line and exit status 2, without a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except SpectraError as exc:
            _fail(str(exc))
        except OSError as exc:  # the file system refused: missing or read-only folder, full disk
            _fail(os_error(exc))
        except MemoryError:
            _fail("out of memory (a size that cannot be allocated here: lower counts, sizes or "
                  "--batch-size)")
        except SystemExit as exc:  # user code (a model or factory) called sys.exit
            _fail(f"user code called sys.exit({exc.code!r}) inside spectra")
        except Exception:
            raise  # a bug of spectra's own: its traceback is wanted
        except BaseException as exc:  # user code raised an exception outside Exception
            _fail(f"user code raised {type(exc).__name__}: {first_line(exc)}")
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2 (a user error)."""
    click.echo(f"error: {first_line(message)}", err=True)
    sys.exit(2)


@click.group(cls=SpectraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spectra")
def cli() -> None:
    """Jacobian spectra of diffusion models across diffusion time."""


@cli.command("estimate")
@click.option("--model", default=None, help="Model spec (.toml, file.py:factory, "
              "package.module:factory, edm:FACTORY, edm:SNAPSHOT.pkl with --allow-pickle, "
              "score_sde:FACTORY, diffusers:FOLDER or diffusers:ORG/NAME from the local Hugging Face "
              "cache, a spectra train checkpoint .pt); omitted: the shipped demo model.")
@click.option("--data", default=None, help="Anchors: omitted (the model's own data), an array "
              "file (.npy/.npz/.h5 of shape (N, *shape); FILE:KEY selects an array) or 'noise'.")
@click.option("--out", required=True, type=click.Path(),
              help="Run file (HDF5); a folder when --model names snapshots.")
@click.option("--n-samples", type=int, default=None,
              help="Number of anchors [default: 8, or fewer if a data file holds fewer].")
@click.option("--times", callback=float_list, default=None, help="Comma-separated times.")
@click.option("--n-times", type=int, default=20, show_default=True,
              help="Grid size (see --spacing).")
@click.option("--t-min", type=float, default=None, help="Grid start [default: schedule's].")
@click.option("--t-max", type=float, default=None, help="Grid end [default: schedule's].")
@click.option("--spacing", type=click.Choice(["tau", "t"]), default=None,
              help="The grid: log-spaced in tau = sigma^2/alpha^2 (the VE-equivalent variance, "
              "where the theory's phases lie) or in t [default: tau; a resume keeps the run's].")
@click.option("--target", type=click.Choice(TARGETS), default=None,
              help="Jacobian of which prediction [default: score; denoiser for --method topk].")
@click.option("--feature", default=None,
              help="Jacobian of the activation of this submodule of a network (its dotted name, as "
              "named_modules gives it) instead of --target: rectangular, singular values only.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True)
@click.option("--k", type=int, default=None,
              help="Values kept per Jacobian [default: all D; 16 for --method topk].")
@click.option("--block-size", type=int, default=None,
              help="Top-k: vectors per block [default: measured]; at least a singular value's "
              "multiplicity to find every copy of it (exact mixtures repeat theirs).")
@click.option("--tol", type=float, default=1e-6, show_default=True,
              help="Top-k: relative residual at which a singular value counts as converged.")
@click.option("--at", type=click.Choice(["clean", "noisy"]), default="clean", show_default=True,
              help="Evaluate at alpha x0 (clean) or alpha x0 + sigma eps (noisy).")
@click.option("--step", default="auto", show_default=True,
              help="Finite-difference step: auto, sigma or a number.")
@click.option("--directions", type=click.Choice(["basis", "haar"]), default="basis",
              show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64",
              show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--batch-size", type=int, default=None,
              help="(anchor, direction) pairs per chunk [default: from the model size].")
@click.option("--compile", is_flag=True,
              help="Compile the forward-mode products with torch.compile (network models; falls "
              "back to eager products, recorded, where compiling fails).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--save-points", is_flag=True, help="Store the exact evaluation points.")
@click.option("--save-vectors", type=click.IntRange(0, MAX_INT), default=0, show_default=True,
              help="Store the top V right and left singular vectors of each Jacobian.")
@click.option("--schedule", type=click.Choice(SCHEDULE_NAMES), default=None,
              help="Schedule of a bare module returned by a factory.")
@click.option("--parameterization", type=click.Choice(PARAMETERIZATIONS), default=None,
              help="What a bare module predicts.")
@click.option("--shape", callback=shape_option, default=None,
              help="Sample shape C,H,W for models that cannot tell it.")
@click.option("--class-label", type=int, default=None,
              help="Class of a class-conditional network (EDM's label_dim, diffusers' num_class_embeds).")
@click.option("--allow-pickle", is_flag=True,
              help="Let an edm:SNAPSHOT.pkl model be unpickled (a pickle runs code: only for files you "
              "trust).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--rendezvous-timeout", type=float, default=DEFAULT_RENDEZVOUS_TIMEOUT, show_default=True,
              help="Under torchrun: seconds to wait for the other ranks to join.")
@click.option("--generated", type=click.IntRange(0, MAX_INT), default=100, show_default=True,
              help="Snapshots (--model a folder or list of .pt): samples drawn from each for its "
              "memorized fraction (0: none).")
@click.option("--resolution", type=float, default=DEFAULT_RESOLUTION, show_default=True,
              help="Snapshots: Delta, the smallest gap that counts in the summary's dimension.")
def estimate_cmd(out: str, resume: bool, overwrite: bool, quiet: bool, rendezvous_timeout: float,
                 generated: int, resolution: float, feature: str | None, **options) -> None:
    """Jacobian spectra of a model over a grid of diffusion times, into an HDF5 run file; for a
    folder (or comma-separated list) of spectra train snapshots, one run file per snapshot in
    the folder --out and a summary against the training step."""
    if feature is not None:
        if options["target"] is not None:
            raise SpectraError("--feature and --target conflict: a run takes the Jacobian of one of them")
        if not feature.strip():
            raise SpectraError("--feature needs a submodule name")
        options["target"] = FEATURE_PREFIX + feature
    opts = EstimateOptions(**options)
    check_request(opts, resume, overwrite)
    command = "spectra " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if opts.model is not None and ("," in opts.model or Path(opts.model).is_dir()):
        from spectra.studies.snapshots import follow, snapshot_paths

        snapshots = snapshot_paths(opts.model)
        if snapshots is not None:
            if feature is not None:
                raise SpectraError("--feature does not apply to snapshots: their summary counts the "
                                   "directions of the score's Jacobian")
            if overwrite:
                raise SpectraError("--overwrite does not apply to snapshots: existing runs in --out are "
                                   "resumed; remove the folder to start again")
            summary = follow(snapshots, out, opts, generated, resolution, progress=not quiet,
                             command=command, seed=opts.seed)
            for row in summary["snapshots"]:
                frac = row["memorized_fraction"]
                click.echo(f"step {row['step']}: {row['kept_directions']} directions kept at tau = "
                           f"{row['tau']:.3g}, memorized fraction "
                           f"{'-' if frac is None else f'{frac:.2f}'}")
            click.echo(f"wrote {len(snapshots)} runs, {out}/summary.json and {out}/summary.png")
            return
    from spectra.sweep.estimate import estimate

    path = estimate(out, opts, resume=resume, overwrite=overwrite, progress=not quiet,
                    command=command, rendezvous_timeout=rendezvous_timeout)
    click.echo(f"wrote {path}")


@cli.command("train")
@click.option("--data", required=True, help="Analytic data spec (.toml, kind gaussian or gmm), or an "
              "array of samples (.npy/.npz/.h5 of shape (N, *shape); FILE:KEY selects an array) "
              "trained on as they are.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt).")
@click.option("--steps", type=int, default=20000, show_default=True, help="Total optimizer steps.")
@click.option("--n-train", type=int, default=None,
              help="Train on N points drawn once (stored in the checkpoint) instead of fresh samples.")
@click.option("--schedule", type=click.Choice(["ve", "vp", "ddpm"]), default=None,
              help="Noise schedule [default: the data spec's, else ve].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--network", type=click.Choice(["auto", "mlp", "unet", "mixture"]), default="auto",
              show_default=True,
              help="Residual MLP, small U-Net (auto: the U-Net for samples of shape (C, H, W) or (H, W)), "
              "or the posterior mean of a learned low-rank Gaussian mixture (Li et al.'s tractable "
              "denoiser).")
@click.option("--width", type=int, default=None,
              help="Hidden width [default: 128 for the MLP, 32 for the U-Net]; for the mixture, each "
              "component's rank [default: 16].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float64"]), default="auto",
              show_default=True, help="Training precision (auto: float32 for the U-Net, float64 for "
              "the MLP); checkpoints are analysed in float64.")
@click.option("--depth", type=int, default=2, show_default=True,
              help="Residual blocks; for the mixture, its components.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--ema", type=float, default=0.999, show_default=True, help="EMA decay.")
@click.option("--checkpoint-every", type=int, default=1000, show_default=True,
              help="Steps between checkpoint writes.")
@click.option("--snapshot-every", type=int, default=None,
              help="Keep a slim checkpoint every S steps in OUT-snapshots/ (to follow training).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint's step.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@click.option("--slim", is_flag=True,
              help="Final checkpoint with the EMA weights only (for shipping; cannot be resumed).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_cmd(out: str, resume: bool, overwrite: bool, slim: bool, quiet: bool, **options) -> None:
    """Train a small score network (MLP, U-Net or low-rank mixture) on an analytic spec or an array
    of real samples into a self-describing checkpoint."""
    from spectra.checkpoint import read_checkpoint
    from spectra.train import TrainOptions, train

    path = train(out, TrainOptions(**options), resume=resume, overwrite=overwrite, progress=not quiet,
                 slim=slim)
    ck = read_checkpoint(path)
    losses = ck["losses"]
    last = f", mean loss of the last {50} steps {float(losses[-1]):.4g}" if len(losses) else ""
    click.echo(f"wrote {path}: step {int(ck['step'])}{last}")


@cli.command("info")
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def info_cmd(run: str, as_json: bool) -> None:
    """Summary of a run file."""
    from spectra_cli.info import describe, summary

    info = summary(run)
    click.echo(json.dumps(info, indent=2) if as_json else describe(info))


@cli.command("compare-theory")
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for metrics.json and the figures [default: RUN-theory beside the run].")
@click.option("--manifold", default=None, help="Linear-manifold spec (.toml, kind gaussian) to "
              "compare with [default: the one the run's model records].")
@click.option("--data", default=None, help="Gaussian-equivalent theory from this data's "
              "covariance: samples (.npy/.npz/.h5) or an analytic .toml spec.")
@click.option("--resolution", type=float, default=DEFAULT_RESOLUTION, show_default=True,
              help="Delta: the smallest gap (normalized units) that counts as visible.")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png",
              show_default=True, help="Figure format.")
@click.option("--dpi", type=int, default=150, show_default=True, help="Figure resolution.")
def compare_cmd(run: str, out: str | None, manifold: str | None, data: str | None,
                resolution: float, fmt: str, dpi: int) -> None:
    """Hold a run against random-matrix theory: metrics.json, figures, and a theory/ group."""
    from spectra.studies.phases import compare

    result = compare(run, out, manifold=manifold, data=data, resolution=resolution, fmt=fmt, dpi=dpi)
    m = result.metrics
    first = min(m["times"], key=lambda row: row["tau"])
    dist = [row["spectrum_distance"] for row in m["times"] if row["spectrum_distance"] is not None]
    click.echo(f"theory: {m['theory']['source']} (D = {m['theory'].get('ambient_dim', '?')}, "
               f"m = {m['theory']['m']}); dimension at tau = {first['tau']:.3g}: measured "
               f"{first['measured_dimension']}, predicted {first['predicted_dimension']}; "
               f"largest spectrum distance {max(dist) if dist else float('nan'):.3g}")
    click.echo(f"wrote {result.figures[0].parent / 'metrics.json'} and "
               f"{', '.join(f.name for f in result.figures)}")


@cli.command("theory")
@click.option("--manifold", required=True, help="Linear-manifold spec (.toml, kind gaussian).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output file (HDF5).")
@click.option("--tau-min", type=float, default=1e-4, show_default=True)
@click.option("--tau-max", type=float, default=1e3, show_default=True)
@click.option("--n-tau", type=int, default=200, show_default=True)
@click.option("--n-grid", type=int, default=1000, show_default=True,
              help="Points of the density grid on (-1, 0).")
@click.option("--resolution", type=float, default=DEFAULT_RESOLUTION, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def theory_cmd(manifold: str, out: str, **options) -> None:
    """Predicted spectra, densities and phases of a linear manifold, without a model."""
    from spectra.studies.phases import theory_file

    click.echo(f"wrote {theory_file(manifold, out, **options)}")


@cli.command("plot")
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the figures [default: RUN-plots beside the run].")
@click.option("--resolution", type=float, default=DEFAULT_RESOLUTION, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png",
              show_default=True, help="Figure format.")
@click.option("--dpi", type=int, default=150, show_default=True, help="Figure resolution.")
def plot_cmd(run: str, out: str | None, resolution: float, fmt: str, dpi: int) -> None:
    """Figures of a run's spectra over diffusion time (no theory)."""
    from spectra.studies.phases import plot_run

    paths = plot_run(run, out, resolution, fmt, dpi)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


for _command in (sample_cmd, memorization_cmd, crossover_cmd, dataset_cmd, angles_cmd,
                 represent_cmd):
    cli.add_command(_command)


def main() -> None:
    cli()
