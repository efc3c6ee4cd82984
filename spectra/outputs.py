"""Where a command writes: the folder must take the file, and only spectra's own kind of file
is ever replaced.

Every writer puts a file under a temporary name beside the output (`NAME.tmp`, `NAME.theory.tmp`)
and renames it into place, holding spectra's lock (spectra.lock) on the output meanwhile, so a
temporary file found there belongs to a process that died: it is removed, or named in one line
when it is not a file at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from spectra.errors import SpectraError
from spectra.lock import LONGEST_SUFFIX

#: the longest suffix a writer adds to an output's name (compare-theory's temporary copy)
_LONGEST_SUFFIX = ".theory.tmp"


def check_folder(path: str | Path) -> Path:
    """The output path, once its folder exists, is a folder and can take a file of this name
    and of its temporary and lock names; one-line SpectraError otherwise."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise SpectraError(f"output folder does not exist: {folder}")
    if not folder.is_dir():
        raise SpectraError(f"output folder is not a folder: {folder}")
    if path.is_dir():
        raise SpectraError(f"output {path} is a folder, not a file")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    longest = len(path.name.encode()) + max(len(_LONGEST_SUFFIX), LONGEST_SUFFIX)
    if longest > name_max:
        raise SpectraError(f"output name too long: {path.name[:40]}... ({len(path.name.encode())} "
                           f"bytes; this file system takes {name_max - (longest - len(path.name.encode()))})")
    probe = folder / f".spectra-write-test-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise SpectraError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    return path


#: how the files spectra writes under temporary names begin: HDF5 (runs, theory files) and zip
#: (torch.save checkpoints)
_OWN_SIGNATURES = (b"\x89HDF\r\n\x1a\n", b"PK\x03\x04")


def clear_stale(tmp: Path) -> None:
    """Remove a temporary file left by a writer that died (empty, or HDF5 or zip as spectra
    writes them); refuse anything else in its place, which is someone else's. Called with the
    output's lock held, so no live spectra process owns `tmp`."""
    if tmp.is_symlink() or (tmp.exists() and not tmp.is_file()):
        raise SpectraError(f"{tmp} is in the way of spectra's temporary file: remove it")
    if not tmp.exists():
        return
    with tmp.open("rb") as fh:
        head = fh.read(8)
    if head and not head.startswith(_OWN_SIGNATURES):
        raise SpectraError(f"{tmp} is in the way of spectra's temporary file and is not one spectra "
                           "left: move it")
    tmp.unlink(missing_ok=True)


def check_replaceable(path: str | Path, is_own: Callable[[Path], None], kind: str) -> None:
    """Refuse (one line) to replace `path` unless `is_own(path)` accepts it as spectra's `kind`
    of file: `is_own` raises SpectraError for anything else."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise SpectraError(f"refusing to replace {path}: it is a link or not a regular file")
    if not path.exists():
        return
    try:
        is_own(path)
    except SpectraError as exc:
        raise SpectraError(f"refusing to replace {path}: it is not a {kind} ({exc})") from None



def make_folder(path: str | Path) -> Path:
    """The output folder `path`, made with its parents if missing; one-line SpectraError when the
    file system refuses."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpectraError(f"cannot make the output folder {path}: {exc.strerror or exc}") from None
    return path


def replace_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)` under the temporary name PATH.tmp (a stale one cleared
    by clear_stale first) and rename it into place, so the file is never half-written; the
    temporary file is removed when writing fails."""
    tmp = path.with_name(path.name + ".tmp")
    clear_stale(tmp)
    try:
        with tmp.open("wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
