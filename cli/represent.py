"""`spectra represent`: representation quality across noise levels (Li et al., NeurIPS 2025;
registered on the group by spectra_cli.main). Like every command, it imports the library it needs
once its options are checked."""

from __future__ import annotations

import click
from spectra_cli.options import SEED, float_list, load_options

from spectra.sweep.options import MAX_INT


@click.command("represent")
@click.option("--model", default=None, help="Model spec, as for estimate [default: the shipped demo].")
@click.option("--data", default=None,
              help="Labelled data: an .npz of x and labels (spectra dataset writes one) or a Gaussian-"
              "mixture spec .toml, labelled by component [default: the model's own mixture].")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json and the figures.")
@click.option("--sigmas", callback=float_list, default=None,
              help="The noise levels sigma = sqrt(tau) [default: --n-sigmas log-spaced levels].")
@click.option("--n-sigmas", type=click.IntRange(2, 10**6), default=None,
              help="Levels of the grid [default: 16].")
@click.option("--sigma-min", type=float, default=None,
              help="Smallest level [default: 0.01, or the schedule's smallest default one].")
@click.option("--sigma-max", type=float, default=None,
              help="Largest level [default: 4, or the schedule's largest default one].")
@click.option("--feature", default=None,
              help="A network submodule whose activation is the feature [default: the denoiser's output].")
@click.option("--rank", type=click.IntRange(1, MAX_INT), default=5, show_default=True,
              help="Dimension of each class subspace of the SNR.")
@click.option("--ensemble", type=click.IntRange(0, 10**6), default=0, show_default=True,
              help="Concatenate the features of this many neighbouring levels on each side.")
@click.option("--test-fraction", type=float, default=0.3, show_default=True,
              help="Share of each class held out to test the linear probe.")
@click.option("--n-samples", type=click.IntRange(2, MAX_INT), default=None,
              help="Samples drawn from a mixture [default: 3000].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png",
              show_default=True, help="Figure format.")
@click.option("--dpi", type=int, default=150, show_default=True, help="Figure resolution.")
@load_options
def represent_cmd(model: str | None, data: str | None, out: str, sigmas: list[float] | None,
                  n_sigmas: int | None, sigma_min: float | None, sigma_max: float | None,
                  feature: str | None, rank: int, ensemble: int, test_fraction: float,
                  n_samples: int | None, seed: int, fmt: str, dpi: int, **load) -> None:
    """Class separation of a model's features across noise levels: Li et al.'s SNR and a linear probe."""
    from spectra.studies.representation import study

    m = study(model, out, data, sigmas, n_sigmas, sigma_min, sigma_max, feature, rank, ensemble,
              test_fraction, n_samples, seed, fmt, dpi, **load)
    for name, curve in m["curves"].items():
        if curve is None:
            click.echo(f"{name}: not finite at every level")
            continue
        shape = f"{curve['shape']} ({curve['direction']})" if curve["direction"] else curve["shape"]
        click.echo(f"{name}: {shape}, max {curve['max']:.3g} at sigma = {curve['argmax_sigma']:.3g}")
    click.echo(f"{len(m['levels'])} noise levels, {m['n_train']} training and {m['n_test']} test samples "
               f"of {len(m['classes'])} classes")
    click.echo(f"wrote {out}/metrics.json and {', '.join(m['figures'])}")
