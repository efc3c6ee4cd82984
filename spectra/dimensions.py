"""The named dimensions of a run file, for the tools of the ecosystem.

Every dataset of a run has named axes: `anchor` (N), `time` (T), `value` (K) and the sample axes
(`feature` for flat samples; `channel`, `height`, `width` for images; `sample_0`, ... otherwise);
the singular vectors kept by --save-vectors have `vector` (V), `input` (D) and `output` (F).
Format version 2 writes them as HDF5 dimension scales (index datasets `anchor`, `time`, `value`
and the sample axes, attached to every dataset) and marks `t`, `alpha`, `sigma` and `tau` as the
coordinates of every (anchor, time) dataset (the CF `coordinates` attribute), so that

    xarray.open_dataset("run.h5", engine="h5netcdf")

gives a labelled Dataset with no phony dimensions. `to_xarray` builds the same Dataset from a
loaded run of any format version; `to_frame` a tidy pandas frame, one row per (anchor, time, value).
Both need xarray (`pip install "diffusion-spectra[xarray]"`).
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from spectra.errors import SpectraError

#: the grid datasets, coordinates of the time axis
GRID = ("t", "alpha", "sigma", "tau")
#: datasets per (anchor, time) and per (anchor, time, value)
PAIR = ("asymmetry", "seconds", "done", "jvp_products", "vjp_products")
VALUES = ("singular_values", "sym_eigenvalues", "residuals")
#: the singular vectors (--save-vectors): right ones over the input's D entries, left ones over
#: the target's F entries
VECTORS = {"right_vectors": ("anchor", "time", "vector", "input"),
           "left_vectors": ("anchor", "time", "vector", "output")}


def sample_dims(ndim: int) -> tuple[str, ...]:
    """Names of the axes of one sample with `ndim` axes."""
    named = {1: ("feature",), 3: ("channel", "height", "width")}
    return named.get(ndim, tuple(f"sample_{i}" for i in range(ndim)))


def dims_of(name: str, sample_ndim: int) -> tuple[str, ...] | None:
    """The dimension names of a run dataset, or None for one outside the format."""
    sample = sample_dims(sample_ndim)
    if name in GRID:
        return ("time",)
    if name in PAIR:
        return ("anchor", "time")
    if name in VALUES:
        return ("anchor", "time", "value")
    if name in VECTORS:
        return VECTORS[name]
    if name == "x0":
        return ("anchor", *sample)
    if name == "points":
        return ("anchor", "time", *sample)
    return None


def attach(f: h5py.File) -> None:
    """Write the dimension scales of a new run file `f` (its datasets all created) and attach
    them; mark the grid as coordinates of the (anchor, time) datasets."""
    x0 = f["x0"]
    sample_ndim = x0.ndim - 1
    sizes = {"anchor": x0.shape[0], "time": f["t"].shape[0], "value": f["singular_values"].shape[2]}
    sizes.update(zip(sample_dims(sample_ndim), x0.shape[1:], strict=True))
    if "right_vectors" in f:
        _, _, kept, dim = f["right_vectors"].shape
        sizes.update(vector=kept, input=dim, output=f["left_vectors"].shape[3])
    for dim, size in sizes.items():
        f.create_dataset(dim, data=np.arange(size, dtype=np.int64))
        f[dim].make_scale(dim)
    for name in list(f):
        dims = dims_of(name, sample_ndim)
        if dims is None or not isinstance(f[name], h5py.Dataset):
            continue
        for axis, dim in enumerate(dims):
            f[name].dims[axis].attach_scale(f[dim])
        if name in PAIR or name in VALUES or name in VECTORS or name == "points":
            f[name].attrs["coordinates"] = " ".join(GRID)


def to_xarray(run: Any) -> Any:
    """The run (a spectra.store.Trajectory) as an xarray.Dataset: every dataset of the format
    under its named dimensions, the grid as coordinates of `time`, the root attributes as
    attributes."""
    try:
        import xarray as xr
    except ImportError:
        raise SpectraError("to_xarray needs xarray: pip install xarray") from None
    sample_ndim = run["x0"].ndim - 1
    grid = {name: ("time", run[name]) for name in GRID}
    variables = {}
    for name, array in run.arrays.items():
        dims = dims_of(name, sample_ndim)
        if dims is not None and name not in GRID:
            variables[name] = (dims, array)
    coords = {"anchor": np.arange(run["x0"].shape[0]), "time": np.arange(len(run["t"])),
              "value": np.arange(run["singular_values"].shape[2]), **grid}
    attrs = {k: v for k, v in run.attrs.items() if isinstance(v, (str, int, float, bool, np.generic))}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def to_frame(run: Any) -> Any:
    """A tidy pandas DataFrame: one row per (anchor, time, value) with the grid (t, alpha,
    sigma, tau), the per-value datasets and the per-(anchor, time) ones."""
    ds = to_xarray(run)
    names = [n for n in (*VALUES, *PAIR) if n in ds]
    return ds[names].to_dataframe().reset_index()
