"""Reading HDF5 files that may be damaged or hostile: data only from the file the user named.

An HDF5 file can make a reader open other files: an external link points to an object in
another file, a dataset with external storage keeps its raw bytes in any other file (even
`/etc/shadow`, read as numbers), and a virtual dataset maps slices of datasets in other files. A
header can also declare a dataset of terabytes in a file of kilobytes. `dataset` refuses all of
these in one line before a byte is read; every reader of run files and array files goes through
it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from spectra.errors import SpectraError, first_line
from spectra.limits import require_memory


def open_file(path: str | Path, mode: str = "r") -> h5py.File:
    """h5py.File(path, mode); one-line SpectraError when the file is not readable HDF5."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise SpectraError(f"cannot read {path} as HDF5: {exc}") from None


@contextlib.contextmanager
def damaged(path: str | Path) -> Iterator[None]:
    """Turn the errors HDF5 raises on a damaged file (OSError, RuntimeError from its metadata
    readers) into one SpectraError line naming the file."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        reason = first_line(exc) or type(exc).__name__
        raise SpectraError(f"{path} is a damaged HDF5 file: {reason}") from None


def dataset(f: h5py.File, name: str, path: str | Path) -> h5py.Dataset:
    """The dataset `name` of f, which must live inside f: SpectraError for a missing name, a
    soft or external link on its way, external raw storage, a virtual dataset or a group."""
    parts = name.strip("/").split("/")
    node: h5py.Group = f
    for i, part in enumerate(parts):
        link = node.get(part, getlink=True)
        where = "/".join(parts[: i + 1])
        if link is None:
            raise SpectraError(f"{path} has no dataset {name!r}")
        if isinstance(link, h5py.ExternalLink):
            raise SpectraError(f"{path}: {where!r} is a link into another file ({link.filename}); "
                               "spectra reads data only from the file it is given")
        if not isinstance(link, h5py.HardLink):  # a soft link may lead on to an external one
            raise SpectraError(f"{path}: {where!r} is a soft link; spectra reads only datasets "
                               "stored under their own name")
        try:
            node = node[part]
        except (KeyError, OSError):
            raise SpectraError(f"{path}: {where!r} is a broken link") from None
    if not isinstance(node, h5py.Dataset):
        raise SpectraError(f"{path}: {name!r} is a group, not a dataset")
    plist = node.id.get_create_plist()
    if plist.get_external_count() > 0:
        raise SpectraError(f"{path}: dataset {name!r} keeps its data in another file (external "
                           "storage); spectra reads data only from the file it is given")
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise SpectraError(f"{path}: dataset {name!r} is a virtual dataset over other files; "
                           "spectra reads data only from the file it is given")
    return node


def nbytes(dset: h5py.Dataset) -> int:
    """The bytes a dataset's header declares."""
    return int(np.prod(dset.shape or (), dtype=np.float64)) * dset.dtype.itemsize


def read(f: h5py.File, name: str, path: str | Path) -> np.ndarray:
    """The whole dataset `name` (checked by `dataset`), once its declared size fits in memory."""
    dset = dataset(f, name, path)
    require_memory(nbytes(dset), f"{path}: dataset {name!r} of shape {dset.shape}")
    try:
        return dset[()]
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise SpectraError(f"{path}: cannot read dataset {name!r}: {first_line(exc)}") from None


def dataset_names(f: h5py.File) -> list[str]:
    """Paths of every dataset reachable from f by hard links (external links are not followed),
    in visiting order."""
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def top_level_datasets(f: h5py.File) -> list[str]:
    """Names at the file's root that hold a dataset, and every soft or external link there
    (unresolved), so that `dataset` refuses them by name rather than following or skipping them."""
    return [name for name in f if not isinstance(f.get(name, getlink=True), h5py.HardLink)
            or isinstance(f.get(name), h5py.Dataset)]
