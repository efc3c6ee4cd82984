"""`spectra angles` (registered on the group by spectra_cli.main): principal angles between each
Jacobian's top singular subspace and reference subspaces, from a run saved with --save-vectors."""

from __future__ import annotations

import click

from spectra.sweep.options import MAX_INT


@click.command("angles")
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json and angles.png.")
@click.option("--reference", default="classes", show_default=True,
              help="classes (the class subspaces of the run's mixture data), pca (the data's top "
              "--rank principal components) or a .npy basis (D, r) or bases (B, D, r).")
@click.option("--k", type=click.IntRange(1, MAX_INT), default=None,
              help="Singular vectors spanning the Jacobian's subspace [default: the classes' rank, "
              "else every vector the run kept].")
@click.option("--rank", type=click.IntRange(1, MAX_INT), default=None,
              help="Principal components of --reference pca [default: 1].")
@click.option("--data", default=None, help="Samples for --reference pca (.npy/.npz/.h5) [default: "
              "the run's anchors].")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png",
              show_default=True, help="Figure format.")
@click.option("--dpi", type=int, default=150, show_default=True, help="Figure resolution.")
def angles_cmd(run: str, out: str, reference: str, k: int | None, rank: int | None, data: str | None,
               fmt: str, dpi: int) -> None:
    """Principal angles between each Jacobian's top-k singular subspace and reference subspaces."""
    from spectra.studies.subspaces import study

    m = study(run, out, reference, k, rank, data, fmt, dpi)
    first = min(m["times"], key=lambda row: row["tau"])
    last = max(m["times"], key=lambda row: row["tau"])
    shown = [f"{row['largest_angle_own']:.3g}" if row["largest_angle_own"] is not None else "-"
             for row in (first, last)]
    click.echo(f"largest angle of the top-{m['k']} subspace to its own reference (median): "
               f"{shown[0]} rad at tau = {first['tau']:.3g}, {shown[1]} rad at tau = {last['tau']:.3g}")
    click.echo(f"wrote {out}/metrics.json and {', '.join(m['figures'])}")
