"""Option types and groups the commands share (parsing only: nothing heavy is imported)."""

from __future__ import annotations

import click

from spectra.names import PARAMETERIZATIONS
from spectra.schedules import SCHEDULE_NAMES
from spectra.sweep.options import MAX_INT

#: seeds: non-negative, below the bound of every integer option (spectra.sweep.options.MAX_INT)
SEED = click.IntRange(0, MAX_INT - 1)


def float_list(ctx, param, value: str | None) -> list[float] | None:
    """A click callback: comma-separated numbers, at least one."""
    if value is None:
        return None
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    if not values:
        raise click.BadParameter(f"expected at least one number, got {value!r}")
    return values


def shape_option(ctx, param, value: str | None) -> tuple[int, ...] | None:
    """A click callback: a sample shape C,H,W of positive integers."""
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise click.BadParameter(f"dimensions must be positive, got {value!r}")
    return shape


def load_options(command):
    """The options that say how to read a model spec (as estimate has them)."""
    for option in reversed([
        click.option("--schedule", type=click.Choice(SCHEDULE_NAMES), default=None,
                     help="Schedule of a bare module returned by a factory."),
        click.option("--parameterization", type=click.Choice(PARAMETERIZATIONS), default=None,
                     help="What a bare module predicts."),
        click.option("--shape", callback=shape_option, default=None,
                     help="Sample shape C,H,W for models that cannot tell it."),
        click.option("--class-label", type=int, default=None,
                     help="Class of a class-conditional network (EDM's label_dim, diffusers' "
                     "num_class_embeds)."),
        click.option("--allow-pickle", is_flag=True,
                     help="Let an edm:SNAPSHOT.pkl model be unpickled (only for files you trust)."),
    ]):
        command = option(command)
    return command
