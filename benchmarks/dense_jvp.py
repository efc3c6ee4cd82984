"""Dense jvp Jacobian vs its floor (D batched forward passes) vs the per-direction FD loop.

Issue 2's goal, on a small conv net with D = 3x16x16 = 768: one dense jvp Jacobian costs at most
1.5x the time of D batched forward passes of the same net, and at least 10x less than the
per-direction finite-difference loop (one perturbed evaluation at a time, as the paper's
algorithms are usually coded). All three run in one process on the same net and point.

    python benchmarks/dense_jvp.py [--device cpu|cuda] [--size 16] [--dtype float32|float64]
                                   [--widths 8,32] [--net conv|unet] [--compile]

--net unet runs the same comparison on the small U-Net of tests/assets/unet.py (widths 8 and 16
fit its GroupNorm groups). --compile adds the dense jvp with compiled products (`spectra
estimate --compile`) and, as a second floor, D batched forward passes of torch.compile(net); the
compile times (first calls) are reported apart and left out of the timings.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from common import environment, interleaved, write

from spectra.jacobian import AutodiffPath, jacobian_at
from spectra.models import NetworkScoreModel
from spectra.schedules import Schedule


class SmallConvNet(torch.nn.Module):
    """Three 3x3 convolutions with SiLU and a learned time embedding added to the hidden maps."""

    def __init__(self, channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.c2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.c3 = torch.nn.Conv2d(width, channels, 3, padding=1)
        self.temb = torch.nn.Linear(1, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.temb(torch.log(t)[:, None])[:, :, None, None]
        h = torch.nn.functional.silu(self.c1(x) + emb)
        h = torch.nn.functional.silu(self.c2(h))
        return self.c3(h)


def build(kind: str, width: int, size: int) -> torch.nn.Module:
    if kind == "unet":
        sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "assets"))
        from unet import unet

        return unet(size, width)
    return SmallConvNet(width=width)


def first_call_s(fn, device) -> float:
    """Wall time of fn's first call (compiling, for a compiled fn)."""
    tick = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tick


def measure(kind: str, width: int, shape: tuple[int, ...], dtype, device, batch_size: int,
            repeats: int, fd_repeats: int, compiled: bool) -> dict:
    """The three timings for one net, interleaved, and their ratios."""
    torch.manual_seed(0)
    dim = math.prod(shape)
    net = build(kind, width, shape[-1]).to(device=device, dtype=dtype).eval()
    model = NetworkScoreModel(net, Schedule("ve"), "eps", shape=shape)
    t = 0.5
    x = torch.randn(1, *shape, device=device, dtype=dtype)
    times = torch.full((batch_size,), t, device=device, dtype=dtype)
    batch = torch.randn(dim, *shape, device=device, dtype=dtype)
    h = torch.finfo(dtype).eps ** 0.5

    def forwards(module):
        def floor():
            with torch.no_grad():
                for start in range(0, dim, batch_size):
                    chunk = batch[start : start + batch_size]
                    module(chunk, times[: len(chunk)])
        return floor

    def dense(path: AutodiffPath):
        return lambda: jacobian_at(model, x, t, "eps", "jvp", batch_size=batch_size, path=path)

    def fd_loop():
        with torch.no_grad():
            base = model.target(x, t, "eps")
            for i in range(dim):
                e = torch.zeros_like(x).view(-1)
                e[i] = h
                (model.target(x + e.view_as(x), t, "eps") - base) / h

    fns = {"forward_D_batched": forwards(net), "dense_jvp": dense(AutodiffPath("jvp")),
           "fd_loop_per_direction": fd_loop}
    compile_s = {}
    if compiled:
        fns["forward_D_batched_compiled"] = forwards(torch.compile(net, dynamic=False))
        fns["dense_jvp_compiled"] = dense(AutodiffPath("jvp", compiled=True))
        compile_s = {name: first_call_s(fns[name], device)
                     for name in ("forward_D_batched_compiled", "dense_jvp_compiled")}
    res = interleaved(fns, {name: fd_repeats if name.startswith("fd") else repeats for name in fns},
                      device)
    out = {"net": f"{type(net).__name__}(width={width})",
           "parameters": sum(p.numel() for p in net.parameters()), **res}
    if compiled:
        out["first_call_s"] = compile_s
    pairs = {"jvp_over_forward": ("dense_jvp", "forward_D_batched"),
             "fd_loop_over_jvp": ("fd_loop_per_direction", "dense_jvp")}
    if compiled:
        pairs.update({
            "compiled_jvp_over_forward": ("dense_jvp_compiled", "forward_D_batched"),
            "compiled_jvp_over_compiled_forward": ("dense_jvp_compiled", "forward_D_batched_compiled"),
            "fd_loop_over_compiled_jvp": ("fd_loop_per_direction", "dense_jvp_compiled")})
    for name, (num, den) in pairs.items():
        for stat in ("median_s", "min_s"):
            out[f"ratio_{name}_{stat[:-2]}"] = res[num][stat] / res[den][stat]
    out["goals_met"] = (out["ratio_jvp_over_forward_median"] <= 1.5
                        and out["ratio_fd_loop_over_jvp_median"] >= 10.0)
    if compiled:
        out["goals_met_compiled"] = (out["ratio_compiled_jvp_over_forward_median"] <= 1.5
                                     and out["ratio_fd_loop_over_compiled_jvp_median"] >= 10.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--widths", default="8,32")
    parser.add_argument("--net", default="conv", choices=["conv", "unet"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--fd-repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = (3, args.size, args.size)
    dim = math.prod(shape)
    nets = [measure(args.net, int(w), shape, dtype, device, args.batch_size, args.repeats,
                    args.fd_repeats, args.compile) for w in args.widths.split(",")]
    result = {
        "benchmark": "dense_jvp",
        "command": "python benchmarks/dense_jvp.py " + " ".join(sys.argv[1:]),
        "environment": environment(device),
        "config": {"shape": list(shape), "D": dim, "dtype": args.dtype,
                   "batch_size": args.batch_size},
        "goals": {"ratio_jvp_over_forward_max": 1.5, "ratio_fd_loop_over_jvp_min": 10.0},
        "nets": nets,
    }
    prefix = ("dense_jvp" if args.net == "conv" else "dense_jvp_unet") + ("_compiled" if args.compile else "")
    path = write(f"{prefix}_{device.type}_{args.dtype}_D{dim}", result)
    for net in nets:
        print(f"{net['net']}: forward floor {net['forward_D_batched']['median_s']:.4f} s, "
              f"dense jvp {net['dense_jvp']['median_s']:.4f} s, "
              f"fd loop {net['fd_loop_per_direction']['median_s']:.4f} s | "
              f"jvp/forward {net['ratio_jvp_over_forward_median']:.2f} (goal <= 1.5), "
              f"fd-loop/jvp {net['ratio_fd_loop_over_jvp_median']:.1f} (goal >= 10)")
        if args.compile:
            print(f"  compiled: dense jvp {net['dense_jvp_compiled']['median_s']:.4f} s, "
                  f"forward floor {net['forward_D_batched_compiled']['median_s']:.4f} s | "
                  f"jvp/forward {net['ratio_compiled_jvp_over_forward_median']:.2f}, "
                  f"jvp/compiled forward {net['ratio_compiled_jvp_over_compiled_forward_median']:.2f}, "
                  f"fd-loop/jvp {net['ratio_fd_loop_over_compiled_jvp_median']:.1f} "
                  f"(compiling took {net['first_call_s']['dense_jvp_compiled']:.1f} s)")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
