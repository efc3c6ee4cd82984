"""An exclusive lock of spectra's own on a file it writes, that holds where HDF5's does not.

HDF5 locks a file with flock(), and users of cluster file systems turn that off
(`HDF5_USE_FILE_LOCKING=FALSE`); then nothing stops `compare-theory` from renaming its copy over a
run that `estimate` is still filling. So every spectra command that writes a file first creates
`FILE.lock` with O_CREAT | O_EXCL, an atomic create on local disks, NFS (v3 and later) and Lustre
alike, holding the owner's host, pid and command as JSON (`owner = "spectra"`), and removes it
when done. A second process finds the lock and stops with one line naming the owner. A lock whose
owner is gone (same host, pid not running) is stale and taken over; one from another host is left
for the user to judge, since its process cannot be seen from here, and a file of that name that is
not a spectra lock is never touched.

Hard links: the lock sits beside the file that the path names once symbolic links are resolved,
so two hard links of one file in different names have two locks (HDF5's own locking, where it is
on, still stops the second writer).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spectra.errors import SpectraError

SUFFIX = ".lock"
#: the longest name the lock adds to a file's: LOCK.takeover, or LOCK.<8 hex digits> while created
LONGEST_SUFFIX = len(SUFFIX + ".takeover")
#: what marks a lock file as spectra's own
OWNER = "spectra"


def lock_path(path: str | Path) -> Path:
    """The lock file of `path`: PATH.lock beside the file it names once symbolic links are
    resolved, so two names of one file share one lock."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + SUFFIX)


def _holder(lock: Path) -> dict[str, Any] | None:
    """The lock's owner as spectra recorded it, or None when the file is gone, unreadable or
    not a spectra lock (then it is someone else's file, never removed)."""
    try:
        data = json.loads(lock.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("owner") == OWNER else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a number we cannot judge): assume it runs
    return True


def _age(path: Path) -> float:
    """Seconds since `path` was last written (0 when it is gone)."""
    try:
        return datetime.datetime.now().timestamp() - path.stat().st_mtime
    except OSError:
        return 0.0


def _stale(holder: dict[str, Any] | None) -> bool:
    """Whether a spectra lock can be taken over: its owner ran on this host and is gone."""
    if holder is None:
        return False
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def _create(lock: Path) -> bool:
    """Create the lock file, whole, with this process as owner; False if it exists. The owner
    is written to a private file first and hard-linked to the lock's name (atomic, and never a
    half-written lock); where the file system has no hard links, O_EXCL creates it."""
    owner = {"owner": OWNER, "host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv),
             "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    private = lock.with_name(f"{lock.name}.{secrets.token_hex(4)}")
    private.write_text(json.dumps(owner))
    try:
        os.link(private, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(owner))
        return True
    finally:
        private.unlink(missing_ok=True)


def _take_over(lock: Path, judged: dict[str, Any] | None) -> bool:
    """Replace a lock judged stale by one of this process, unless another process does so
    first: the replacement happens under a second exclusive file (`LOCK.takeover`), and only
    while the lock still holds the owner that was judged gone. A takeover file left by a
    process killed mid-takeover is cleared after a minute."""
    guard = lock.with_name(lock.name + ".takeover")
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        if _age(guard) > 60:
            guard.unlink(missing_ok=True)
        return False
    try:
        if _holder(lock) != judged:
            return False
        lock.unlink(missing_ok=True)
        return _create(lock)
    finally:
        guard.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold spectra's lock on `path` for the block; SpectraError if another process holds it."""
    lock = lock_path(path)
    if not _create(lock):
        holder = _holder(lock)
        if not (_stale(holder) and _take_over(lock, holder)):
            holder = _holder(lock)
            if holder is None:
                raise SpectraError(f"{lock} exists and is not a spectra lock: spectra will not remove it "
                                   f"(move it, or write {path} elsewhere)")
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}: "
                   f"{holder.get('command')}")
            raise SpectraError(f"{path} is in use by another spectra process ({who}); wait for it, or "
                               f"remove {lock} if that process is gone")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
