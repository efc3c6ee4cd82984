"""Forward-AD safety: a context in which models whose fused kernels lack autodiff rules still run.

torch has no forward-mode formula for its fused attention kernels (flash and memory-efficient on
CUDA, `_scaled_dot_product_flash_attention_for_cpu` on the CPU; the CPU one cannot be vmapped in
reverse mode either), and its native group_norm forward-mode rule fails on non-contiguous tangents
(which attention blocks produce). Inside `forward_ad_safe()`:

* F.scaled_dot_product_attention runs on the math backend (torch.nn.attention.sdpa_kernel):
  softmax(q k^T / sqrt(d)) v from matmuls, which every transform supports; diffusers'
  attention processors call it, so their models are covered too;
* F.group_norm is computed from its definition, (x - mean) / sqrt(var + eps) * weight + bias over
  each group, the same function up to rounding.

Both are restored on exit. The patch is process-wide (so are torch's SDPA backend flags): a lock
keeps two threads from interleaving their contexts, and the model's other threads see the patched
group_norm while a context is open. `CONTEXTS` names the contexts recorded in run files.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CONTEXTS = ("default", "forward-ad-safe")
_LOCK = threading.RLock()


def group_norm_by_definition(
    input: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None, eps: float = 1e-5,
) -> torch.Tensor:
    """F.group_norm written with reductions: input (N, C, *) normalized over each of num_groups
    channel groups (biased variance), then scaled by weight (C,) and shifted by bias (C,)."""
    n, c = input.shape[:2]
    groups = input.reshape(n, num_groups, -1)
    mean = groups.mean(-1, keepdim=True)
    centered = groups - mean
    var = centered.pow(2).mean(-1, keepdim=True)
    out = (centered * torch.rsqrt(var + eps)).reshape(input.shape)
    per_channel = (1, c) + (1,) * (input.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(per_channel)
    if bias is not None:
        out = out + bias.reshape(per_channel)
    return out


@contextmanager
def forward_ad_safe() -> Iterator[None]:
    """Math attention and group_norm by definition (module docstring) for the block's duration."""
    with _LOCK:
        native = F.group_norm
        F.group_norm = group_norm_by_definition
        try:
            with sdpa_kernel([SDPBackend.MATH]):
                yield
        finally:
            F.group_norm = native


def entered(context: str) -> AbstractContextManager[None]:
    """The named context ("default": nothing; "forward-ad-safe": forward_ad_safe()), to enter."""
    if context not in CONTEXTS:
        raise ValueError(f"unknown autodiff context {context!r}")
    return nullcontext() if context == "default" else forward_ad_safe()
