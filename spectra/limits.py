"""Sizes checked before they are allocated: memory and disk.

Linux overcommits memory: an allocation a little larger than what is free succeeds and the
process is killed later, when it touches the pages. So every size that comes from the user (counts,
dimensions, grids, batch sizes, widths) or from a file's header (an array file or run file may
declare terabytes) is checked here against what is available before anything is allocated, and a
size that cannot fit ends in one SpectraError line naming what asked for it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from spectra.errors import SpectraError

#: what is available when the system cannot tell (no /proc, no sysconf)
_UNKNOWN = 2**62


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free() -> int | None:
    """The cgroup v2 memory limit less its usage, where one is set (containers)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the kernel's MemAvailable, the
    cgroup's free share and, without /proc, the physical memory."""
    found = [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
    if not found:
        try:
            found = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
        except (ValueError, OSError, AttributeError):
            return _UNKNOWN
    return min(found)


def human(nbytes: float) -> str:
    """Bytes in binary units: '3.2 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def require_memory(nbytes: float, what: str) -> None:
    """Raise SpectraError when `nbytes` (what `what` needs) exceed the available memory."""
    free = available_memory()
    if nbytes > free:
        raise SpectraError(f"{what} needs {human(nbytes)} of memory; {human(free)} is available")


def require_disk(folder: str | Path, nbytes: float, what: str) -> None:
    """Raise SpectraError when `nbytes` exceed the free space of the file system of `folder`."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the write itself will say what is wrong with the folder
    if nbytes > free:
        raise SpectraError(f"{what} needs {human(nbytes)} of disk; {human(free)} is free in {folder}")
