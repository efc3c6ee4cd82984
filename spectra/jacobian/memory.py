"""Device memory that one (point, vector) pair of an operator's products takes, measured.

The chunk size of a sweep on a GPU is a share of the free memory over the bytes one pair needs.
Those bytes depend on the network (its activations under forward- or reverse-mode AD) far more
than on D, so they are measured, not guessed: the CUDA caching allocator's peak while the operator
multiplies a small block of vectors at one point, over the block's size. The peak counts the
vectors, the products, every activation the transforms keep and cuDNN's workspaces; the point's
own primal pass is shared by the block, so dividing by the block size overstates a pair slightly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spectra.jacobian.operators import JacobianOperator

#: vectors in the measured block
PROBE_PAIRS = 8


def pair_bytes(op: JacobianOperator, products: Sequence[str], pairs: int = PROBE_PAIRS) -> int:
    """Peak CUDA bytes per pair while `op` (its points on a CUDA device) applies each of
    `products` ("matmat": J V, "rmatmat": J^T U) to `pairs` random vectors at its first point,
    in chunks of op.batch_size pairs."""
    device = op.points.device
    if device.type != "cuda":
        raise ValueError(f"memory is measured on CUDA devices, not {device}")
    single = op.subset([0])
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator(device).manual_seed(0)  # leaves the global CUDA stream of numbers alone
    for name in products:
        vectors = torch.randn(1, single.size_in(name), pairs, dtype=op.points.dtype, device=device,
                              generator=gen)
        getattr(single, name)(vectors)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    return max(1, -(-peak // pairs))
