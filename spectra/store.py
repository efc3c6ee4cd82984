"""The HDF5 trajectory file, format_version 1 (DESIGN.md, "The HDF5 trajectory file").

Durability (prior-art.md, h5py 1807/714): a new file is written in full (every dataset allocated
and NaN-filled) under a temporary name and renamed into place, so a file at the final path is
always a readable one; afterwards only fixed-size datasets are overwritten in place. Each unit of
work writes its values, flushes, then sets its `done` entries and flushes again, so `done` never
certifies values that did not reach the disk. A run killed at any point resumes from `done`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spectra.errors import SpectraError

FORMAT = "spectra-trajectory"
FORMAT_VERSION = 1

#: datasets of shape (N, T, K) and (N, T) holding per-(anchor, time) results
VALUE_DATASETS = ("singular_values", "sym_eigenvalues", "residuals")
SCALAR_DATASETS = ("asymmetry", "seconds")
#: (N, T) product counts of the top-k method (NaN where not computed)
PRODUCT_DATASETS = ("jvp_products", "vjp_products")


def _encode(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        return str(value)  # numpy str_ has no HDF5 type
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def check_format(f: h5py.File, path: str | Path) -> None:
    """Raise SpectraError unless f is a spectra trajectory of this format version."""
    fmt = _decode(f.attrs.get("format", ""))
    if fmt != FORMAT:
        raise SpectraError(f"{path} is not a spectra trajectory file (format {fmt or 'missing'!r})")
    version = _decode(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise SpectraError(
            f"{path} has format_version {version}; this spectra reads version {FORMAT_VERSION}"
        )


def open_checked(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an existing trajectory file, validating it; one-line SpectraError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"run file not found: {path}")
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise SpectraError(f"cannot read {path} as HDF5: {exc}") from None
    try:
        check_format(f, path)
    except SpectraError:
        f.close()
        raise
    return f


@contextmanager
def atomic_h5(path: str | Path, suffix: str = ".tmp") -> Iterator[h5py.File]:
    """A new HDF5 file written under a temporary name beside `path` and renamed over it when the
    block ends; on any error (or interrupt) the temporary file is removed and `path` is left as
    it was."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create(
    path: str | Path,
    attrs: dict[str, Any],
    grid: dict[str, np.ndarray],
    x0: np.ndarray,
    k: int,
    points_shape: tuple[int, ...] | None = None,
    residuals: bool = False,
) -> None:
    """Write a new, empty trajectory file at `path` (replacing any file there, atomically).

    Args:
        attrs: root attributes (dicts and lists are stored as JSON strings, None as "").
        grid: `t`, `alpha`, `sigma`, `tau`, each (T,).
        x0: the anchors (N, *shape).
        k: K, the number of values kept per (anchor, time).
        points_shape: (N, T, *shape) to keep the evaluation points, or None.
        residuals: whether to allocate `residuals` and the product counts (top-k methods).
    """
    n, t = len(x0), len(grid["t"])
    with atomic_h5(path) as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})
        for key, value in attrs.items():
            f.attrs[key] = _encode(value)
        f.attrs["complete"] = False
        for name in ("t", "alpha", "sigma", "tau"):
            f.create_dataset(name, data=np.asarray(grid[name], dtype=np.float64))
        f.create_dataset("x0", data=np.asarray(x0, dtype=np.float64))
        names = VALUE_DATASETS if residuals else VALUE_DATASETS[:2]
        for name in names:
            f.create_dataset(name, data=np.full((n, t, k), np.nan))
        for name in SCALAR_DATASETS + (PRODUCT_DATASETS if residuals else ()):
            f.create_dataset(name, data=np.full((n, t), np.nan))
        f.create_dataset("done", data=np.zeros((n, t), dtype=bool))
        if points_shape is not None:
            f.create_dataset("points", data=np.full(points_shape, np.nan))


class TrajectoryWriter:
    """Fills an existing trajectory file unit by unit. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = open_checked(self.path, "r+")

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    @property
    def done(self) -> np.ndarray:
        return self.file["done"][()]

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.file.attrs[key] = _encode(value)
        self.file.flush()

    def write(
        self,
        anchors: np.ndarray,
        t_index: int,
        values: dict[str, np.ndarray],
        points: np.ndarray | None = None,
    ) -> None:
        """Write results for `anchors` (indices) at time index t_index, then mark them done.

        values maps dataset names to arrays with a leading anchor axis: (n, K) for
        singular_values / sym_eigenvalues / residuals, (n,) for asymmetry / seconds.
        """
        rows = sorted(int(n) for n in anchors)
        if rows != [int(n) for n in anchors] or len(set(rows)) != len(rows):
            raise ValueError("anchor indices must be increasing")
        for name, arr in values.items():
            dset = self.file[name]
            if dset.ndim == 3:
                dset[rows, t_index, : arr.shape[1]] = arr
            else:
                dset[rows, t_index] = arr
        if points is not None:
            self.file["points"][rows, t_index] = points
        self.file.flush()
        self.file["done"][rows, t_index] = True
        self.file.flush()

    def finish(self) -> None:
        if self.done.all():
            self.file.attrs["complete"] = True
        self.file.flush()


def merge(path: str | Path, part: str | Path) -> int:
    """Copy into run `path` the (anchor, time) values that run `part` (a shard of the same run:
    same `created` stamp) has done and `path` has not: values first, then `done`. Returns how
    many were merged; `part` is left as it is."""
    with open_checked(part) as src, open_checked(path, "r+") as dst:
        if _decode(src.attrs.get("created")) != _decode(dst.attrs.get("created")):
            raise SpectraError(f"{part} is not a shard of {path} (another run's leftover); remove it")
        new = src["done"][()] & ~dst["done"][()]
        if not new.any():
            if dst["done"][()].all() and not dst.attrs.get("complete"):
                dst.attrs["complete"] = True
                dst.flush()
            return 0
        for name in VALUE_DATASETS + SCALAR_DATASETS + PRODUCT_DATASETS + ("points",):
            if name in dst:
                values = dst[name][()]
                values[new] = src[name][()][new]
                dst[name][...] = values
        dst.flush()
        dst["done"][...] = dst["done"][()] | new
        if dst["done"][()].all():
            dst.attrs["complete"] = True
        dst.flush()
        return int(new.sum())


@dataclass
class Trajectory:
    """A run file's arrays and metadata (what spectra.load returns)."""

    path: Path
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def options(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("options") or "{}")

    @property
    def schedule(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("schedule") or "{}")


def load(path: str | Path) -> Trajectory:
    """Read a trajectory file: every dataset (theory/ ones under 'theory/NAME') and attribute."""
    with open_checked(path) as f:
        attrs = {k: _decode(v) for k, v in f.attrs.items()}
        arrays: dict[str, np.ndarray] = {}
        f.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()])
            if isinstance(obj, h5py.Dataset) else None
        )
    return Trajectory(Path(path), attrs, arrays)
