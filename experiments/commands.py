"""What the reproduce_* experiment scripts share: each spectra command run as a subprocess, exactly
as a user would type it, listed for the page it writes and timed by group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

#: the commands that take --quiet (no progress bar in the scripts' output)
QUIET = ("train", "estimate", "memorization", "sample")


class Commands:
    """The commands run in the folder `work`: `commands` lists them as typed (paths inside `work`
    relative), `seconds` sums their wall time by label."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.commands: list[str] = []
        self.seconds: dict[str, float] = {}

    def command(self, *args: str | Path) -> list[str]:
        """The arguments of one spectra command, listed (as `spectra ...`) for the page."""
        args = [str(a) for a in args] + (["--quiet"] if args[0] in QUIET else [])
        self.commands.append("spectra " + " ".join(a.replace(str(self.work) + "/", "") for a in args))
        return args

    def execute(self, args: list[str], label: str, threads: int | None = None) -> str:
        """Run one listed command, timed under `label`; returns its standard output."""
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "spectra_cli", *args], cwd=self.work,
                             capture_output=True, text=True, env=env)
        if res.returncode:
            sys.exit(f"spectra {' '.join(args)} failed:\n{res.stderr}")
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
        return res.stdout


def trained(checkpoint: Path, steps: int) -> bool:
    """Whether `checkpoint` exists at `steps` steps (read with weights_only): --reuse keeps it."""
    return checkpoint.exists() and int(torch.load(checkpoint, weights_only=True)["step"]) == steps
