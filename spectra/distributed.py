"""Distributed sweeps under torchrun: anchors sharded across ranks, one run file at the end.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `current()` joins the process group (gloo: only
small objects and barriers cross ranks; with CUDA, rank r computes on cuda:LOCAL_RANK). Without
torchrun it is a one-rank sweep and nothing here communicates. The protocol (spectra.estimate):

1. Every rank checks the options, loads the model and builds the same anchors and times; rank 0
   alone touches RUN.h5 (merging leftover shards of an interrupted sweep first, then creating
   or resuming it). Every rank's outcome is shared (`agree`), so a refusal anywhere stops all
   ranks with the same one-line error and no file changed by the others; then every rank takes
   the chunk size and autodiff path recorded in RUN.h5, so all agree on the chunk layout.
2. Rank r copies RUN.h5 to its shard RUN.h5.rank{r} (under a temporary name, then renamed) and
   fills the anchor chunks c with c mod world = r, in the chunk layout of a one-process run.
3. After a barrier rank 0 merges the shards into RUN.h5 (values first, then `done`) and removes
   them. A killed rank takes the sweep down (torchrun stops the others); `--resume`, with any
   number of ranks or none, merges what each shard certified and computes only the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch.distributed as dist

from spectra.errors import SpectraError, first_line
from spectra.names import DEFAULT_RENDEZVOUS_TIMEOUT

#: seconds the rendezvous waits for a missing peer
#: ranks with fewer chunks wait at the final barrier for the others: no practical time limit
_SWEEP_TIMEOUT = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Sweep:
    """This process's place in a sweep: rank r of `world` processes (0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def owns(self, chunk: int) -> bool:
        """Whether anchor chunk number `chunk` is this rank's."""
        return chunk % self.world == self.rank

    def agree(self, error: str | None) -> None:
        """Share each rank's outcome of a step; raise SpectraError (the first rank's message)
        on every rank if any rank failed. Also a barrier."""
        if self.world == 1:
            if error is not None:
                raise SpectraError(error)
            return
        outcomes: list[str | None] = [None] * self.world
        dist.all_gather_object(outcomes, error, group=_sweep_group)
        failed = [e for e in outcomes if e is not None]
        if failed:
            raise SpectraError(failed[0])

    def barrier(self) -> None:
        """Wait for every rank, without a practical time limit (the sweep's chunks take as long
        as they take)."""
        if self.world > 1:
            dist.barrier(group=_sweep_group)

    def shard(self, out: Path) -> Path:
        """This rank's shard file beside RUN.h5."""
        return out.with_name(f"{out.name}.rank{self.rank}")


def shards(out: Path) -> list[Path]:
    """Shard files of RUN.h5 left by a sweep, in rank order."""
    ranks = {p: p.name[len(out.name) + len(".rank"):] for p in out.parent.glob(f"{out.name}.rank*")}
    return sorted((p for p, r in ranks.items() if r.isdigit()), key=lambda p: int(ranks[p]))


def _env_int(name: str, default: str | None = None) -> int:
    value = os.environ.get(name, default)
    if value is None:
        raise SpectraError(f"torchrun: WORLD_SIZE is set but {name} is not (launch with torchrun, "
                           "or unset WORLD_SIZE)")
    try:
        return int(value)
    except ValueError:
        raise SpectraError(f"torchrun: {name}={value!r} is not an integer") from None


def current(timeout: float = DEFAULT_RENDEZVOUS_TIMEOUT) -> Sweep:
    """The sweep this process belongs to, joining torchrun's process group on first use; the
    rendezvous with the other ranks waits at most `timeout` seconds, then ends in one line."""
    world = _env_int("WORLD_SIZE", "1")
    if world <= 1:
        return Sweep()
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK", "0")
    if not 0 <= rank < world or local < 0:
        raise SpectraError(f"torchrun: RANK={rank} and LOCAL_RANK={local} do not fit WORLD_SIZE={world}")
    if not timeout > 0:
        raise SpectraError(f"--rendezvous-timeout must be positive, got {timeout}")
    if not dist.is_initialized():
        with tempfile.TemporaryFile("w+") as log:
            try:  # gloo even with CUDA: only small objects and barriers cross ranks
                with _stderr_into(log):  # c10d logs each retry: dozens of lines for one failure
                    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
                    global _sweep_group
                    _sweep_group = dist.new_group(backend="gloo", timeout=_SWEEP_TIMEOUT)
            except Exception as exc:  # a broken launch environment, or a peer that never came
                raise SpectraError(f"cannot join the torchrun process group of {world} ranks within "
                                   f"{timeout:g} s (--rendezvous-timeout): {first_line(exc)}") from None
            log.seek(0)
            sys.stderr.write(log.read())  # a successful join keeps what it said
    return Sweep(rank, world, local)


@contextlib.contextmanager
def _stderr_into(log: IO[str]) -> Iterator[None]:
    """Send this process's standard error (the file descriptor, where torch's C++ logs go) into
    `log` for the block; a no-op where stderr has no descriptor."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    os.dup2(log.fileno(), fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)


#: the group of the final barrier, where ranks wait for the slowest one's chunks
_sweep_group = None
