"""Do top-k's warm starts pay? Products per Jacobian over a sweep of times at one anchor, each
time started from the previous time's right singular vectors mixed into the block (what
`spectra estimate --method topk` does) against a random start, same block size and tolerance,
on the random-weight U-Net (tests/assets/unet.py), float64, in one process.

    python benchmarks/warm_start.py [--size 16] [--k 16] [--block 1] [--times 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import environment, write

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "assets"))
from unet import unet  # noqa: E402

from spectra.jacobian import topk_at  # noqa: E402
from spectra.models import NetworkScoreModel  # noqa: E402
from spectra.schedules import Schedule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--block", type=int, default=1)
    parser.add_argument("--times", type=int, default=12)
    args = parser.parse_args()
    sched = Schedule("vp")
    model = NetworkScoreModel(unet(args.size, args.width).double().eval(), sched, "eps",
                              shape=(3, args.size, args.size))
    gen0 = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 3, args.size, args.size, dtype=torch.float64, generator=gen0)
    times = sched.tau_grid(*sched.default_range, args.times)
    dim = x0.numel()
    rows, warm = [], None
    for i, t in enumerate(times):
        alpha = float(sched.alpha(t))
        gen = np.random.default_rng([0, i])
        mix = torch.as_tensor(gen.standard_normal((1, dim if warm is None else args.k, args.block)))
        start = mix if warm is None else warm @ mix
        cold_start = torch.as_tensor(gen.standard_normal((1, dim, args.block)))
        hot = topk_at(model, alpha * x0, float(t), "denoiser", args.k, 1e-6, block_size=args.block,
                      start=start)
        cold = topk_at(model, alpha * x0, float(t), "denoiser", args.k, 1e-6, block_size=args.block,
                       start=cold_start)
        warm = hot.right_vectors
        rows.append({"t": float(t), "tau": float(sched.tau(t)),
                     "warm_products": int(hot.n_jvp[0] + hot.n_vjp[0]),
                     "cold_products": int(cold.n_jvp[0] + cold.n_vjp[0]),
                     "max_rel_diff": float(np.max(np.abs(hot.singular_values - cold.singular_values)
                                                  / cold.singular_values))})
        print(rows[-1], flush=True)
    later = rows[1:]  # the first time has nothing to start from
    summary = {"warm_over_cold_products_after_the_first_time":
               sum(r["warm_products"] for r in later) / sum(r["cold_products"] for r in later)}
    print(summary)
    write(f"warm_start_cpu_D{dim}_k{args.k}_b{args.block}",
          {"benchmark": "warm_start", "command": "python benchmarks/warm_start.py " + " ".join(sys.argv[1:]),
           "environment": environment(torch.device("cpu")), "config": vars(args), "rows": rows,
           "summary": summary})


if __name__ == "__main__":
    main()
