"""Choices made by measurement, before a sweep: the fastest autodiff path, the chunk size and the
top-k block size, for one model at its first anchor.

Which route is fastest depends on the network, the dtype and the hardware far more than on D:
torch's forward-mode GroupNorm makes jvp 1.5-3x slower than vjp for a U-Net on a CPU, while
forward mode wins for an MLP; a CPU runs conv nets fastest one vector at a time (the
torch.autograd-rows engine), a GPU in large batches. So spectra times the candidates on the
model itself and keeps the fastest (benchmarks/peers.py checks the choice against every peer).
Each timing is the least of `repeats` runs after one warm-up run (which also compiles, where a
path is compiled), in seconds per product (one vector through J or J^T).

On the CPU the memory a chunk needs is measured too: the growth of the process's peak resident
set (Linux: /proc/self/clear_refs resets VmHWM) while the products of one chunk run.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spectra.errors import SpectraError, first_line
from spectra.jacobian.methods import PRODUCTS, AutodiffPath, method_operator, runnable_paths
from spectra.models.base import ScoreModel

#: vectors per timed chunk when paths are compared
PATH_WIDTH = 32
#: chunk sizes (pairs) timed on the CPU, smallest first, while each is faster than the last
CHUNK_SIZES = (32, 64, 128, 256, 512, 1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device, repeats: int = 2) -> float:
    """The least wall time of `repeats` calls of fn, after one warm-up call."""
    fn()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - tick)
    return best


def _vectors(n: int, dim: int, width: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(like.device).manual_seed(0)
    return torch.randn(n, dim, width, dtype=like.dtype, device=like.device, generator=gen)


def _products(model: ScoreModel, point: torch.Tensor, t: float, target: str, path: AutodiffPath,
              width: int, n_points: int, step: str | float) -> Callable[[], None]:
    """A call that takes path's products (PRODUCTS[path.method]) of `width` vectors at each of
    `n_points` copies of `point`, in one chunk."""
    points = point[None].expand(n_points, *point.shape).contiguous()
    op = method_operator(model, points, t, target, path, n_points * width, step)
    vectors = {product: _vectors(n_points, op.size_in(product), width, point)
               for product in PRODUCTS[path.method]}

    def run() -> None:
        for product, block in vectors.items():
            getattr(op, product)(block)

    return run


def product_seconds(model: ScoreModel, point: torch.Tensor, t: float, target: str, path: AutodiffPath,
                    width: int, n_points: int = 1, step: str | float = "auto", repeats: int = 2) -> float:
    """Seconds per product of path's products on `width` vectors at each of `n_points` copies of
    `point`, in one chunk (least of `repeats` after a warm-up)."""
    run = _products(model, point, t, target, path, width, n_points, step)
    return seconds(run, point.device, repeats) / (n_points * width * len(PRODUCTS[path.method]))


def fastest_path(model: ScoreModel, point: torch.Tensor, t: float, target: str) -> AutodiffPath:
    """For --method auto: every autodiff path that runs (methods.runnable_paths, forward and
    reverse mode) timed on min(D, PATH_WIDTH) vectors at `point`; the fastest, with every
    path's seconds per product in its `timings` (by label). Central differences when no path
    runs."""
    found, tried = runnable_paths(model, point, t, target, "auto")
    width = min(point.numel(), PATH_WIDTH)
    timings = {}
    for path in list(found):
        try:
            timings[path.label] = product_seconds(model, point, t, target, path, width)
        except Exception as exc:  # fails on a block of vectors (memory, say): not a candidate
            found.remove(path)
            tried.append({"method": path.method, "engine": path.engine, "context": path.context,
                          "compiled": path.compiled, "error": f"{type(exc).__name__}: {first_line(exc)}"})
    if not found:
        return AutodiffPath("fd-central", "none", tried=tried)
    best = min(found, key=lambda p: timings[p.label])
    best.tried = tried
    best.timings = {"paths": timings, "width": width}
    return best


def peak_bytes(fn: Callable[[], object]) -> int | None:
    """How far fn raises the process's peak resident set, in bytes (Linux: VmHWM after
    /proc/self/clear_refs resets it); None where the system does not tell."""
    status, clear = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def hwm() -> int | None:
        try:
            found = re.search(r"VmHWM:\s+(\d+)\s+kB", status.read_text())
        except OSError:
            return None
        return int(found.group(1)) * 1024 if found else None

    try:
        clear.write_text("5")
    except OSError:
        return None
    before = hwm()
    fn()
    after = hwm()
    return None if before is None or after is None else max(0, after - before)


def fastest_chunk(model: ScoreModel, point: torch.Tensor, t: float, target: str, path: AutodiffPath,
                  step: str | float, most: int, budget: int, guess: int = 0) -> tuple[int, dict]:
    """The CPU chunk size (pairs) of the fewest seconds per product among CHUNK_SIZES, each at
    most `most` (the pairs a sweep has), within `budget` bytes: the memory of a chunk is
    measured (peak_bytes) on the smallest size, and sizes beyond budget / bytes-per-pair are
    not tried, the bytes per pair being the larger of the measured and `guess` (the peak grows
    less than a chunk takes where the allocator reuses memory freed before). Each size is timed
    twice after a warm-up; the search stops after two sizes in a row that are no faster than the
    best. Returns the size and what was measured."""
    dim = point.numel()
    sizes = sorted({min(most, s) for s in CHUNK_SIZES})
    record: dict = {"seconds_per_product": {}}
    first = sizes[0]
    n_points = max(1, first // dim)
    width = min(first, dim)
    try:
        used = peak_bytes(_products(model, point, t, target, path, width, n_points, step))
    except Exception as exc:  # user model code, on a block of vectors
        raise SpectraError(f"{path.method} products of {width} vectors fail at t={t:g}: "
                           f"{type(exc).__name__}: {first_line(exc)} (pass --batch-size)") from exc
    measured = 0 if used is None else -(-used // (n_points * width))
    record["measured_bytes_per_pair"] = measured if used is not None else None
    per_pair = max(measured, guess, 1)
    sizes = [s for s in sizes if s == first or s * per_pair <= budget]
    best, best_s, worse = first, math.inf, 0
    for size in sizes:
        n_points = max(1, size // dim)
        try:
            spent = product_seconds(model, point, t, target, path, min(size, dim), n_points, step, repeats=2)
        except Exception as exc:  # this size fails (memory, say): the smaller ones stand
            record["failed"] = {str(size): f"{type(exc).__name__}: {first_line(exc)}"}
            break
        record["seconds_per_product"][str(size)] = spent
        if spent < best_s:
            best, best_s, worse = size, spent, 0
            continue
        worse += 1
        if worse == 2:  # two larger sizes in a row no faster: past the best
            break
    if not record["seconds_per_product"]:
        raise SpectraError(f"{path.method} products of {first} pairs fail at t={t:g}: "
                           f"{record['failed'][str(first)]} (pass --batch-size)")
    return best, record


def fastest_block(model: ScoreModel, point: torch.Tensor, t: float, target: str, path: AutodiffPath,
                  k: int, n_points: int, batch_size: int) -> tuple[int, dict]:
    """The top-k block size b: among 1, 2, 4, ... (at most max(1, k // 10) on a CPU, at most k on
    a GPU), the one of the fewest seconds per product, timed with as many anchors side by side as
    a chunk holds (min(n_points, batch_size // b), at most PATH_WIDTH vectors). A larger block
    needs more products to converge: on a random-weight U-Net (D = 3072, k = 16 and 32) block
    sizes 1, 2, 4 and 8 took 176, 220, 272, 368 (k = 16) and 262, 300, 384, 480 (k = 32)
    products against ARPACK's 240 and 362, so a CPU keeps b <= k / 10, which stays below ARPACK;
    a GPU, where a block costs little more than one vector, takes the fastest up to k."""
    cap = max(1, k // 10) if point.device.type == "cpu" else k
    blocks = [2**i for i in range(int(math.log2(cap)) + 1)]
    timings, failed = {}, {}
    for b in blocks:
        anchors = max(1, min(n_points, batch_size // b, max(1, PATH_WIDTH // b)))
        try:
            timings[str(b)] = product_seconds(model, point, t, target, path, b, anchors, repeats=1)
        except Exception as exc:  # this block fails (memory, say): the others stand
            failed[str(b)] = f"{type(exc).__name__}: {first_line(exc)}"
    if not timings:
        raise SpectraError(f"top-k's products fail on blocks of vectors at t={t:g}: {failed['1']}")
    best = min((int(b) for b in timings), key=lambda b: timings[str(b)])
    return best, {"seconds_per_product": timings, **({"failed": failed} if failed else {})}
