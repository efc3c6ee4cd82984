"""The fixed cost of a dense jvp Jacobian: what it takes when the network's arithmetic is nil.

On an H100 the dense jvp of dense_jvp.py's net at D = 3x16x16 took 3.7 ms at width 8 and 4.2 ms
at width 32 (committed results, torch 2.11), while D batched forward passes took 0.5 ms: a time
that does not grow with the width is not arithmetic but the CPU issuing the ops. This benchmark
measures that fixed cost on any device with the same net made tiny (width 2, 3x4x4, D = 48, one
chunk), where every kernel is negligible:

* the floor (D batched forward passes) and one dense Jacobian by jvp, by jvp with compiled
  products (`spectra estimate --compile`) and by vjp (jacobian_at), timed round-robin;
* where the jvp's Python time goes (cProfile, own time by file): torch's Python decompositions
  and meta kernels (forward AD gives the parameters efficient zero tangents, whose arithmetic
  runs the ops' Python reference implementations to find output shapes), torch.func, the rest
  of torch, spectra;
* one efficient-zero-tensor add against a plain add of the same shape;
* whether torch.compile can compile the nested vmap over points and vectors of jvp of x -> w * x,
  w a parameter (pytorch issues 160508 and 151196): "ok" or the error. Compiled products go one
  point at a time while it fails.

    python benchmarks/jvp_overhead.py [--device cpu|cuda] [--repeats 50]

Writes results/jvp_overhead_{device}.json.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import sys
import time
from collections import Counter

import torch
from common import environment, interleaved, write
from dense_jvp import SmallConvNet
from torch.func import jvp, vmap

from spectra.errors import first_line
from spectra.jacobian import AutodiffPath, jacobian_at
from spectra.models import NetworkScoreModel
from spectra.schedules import Schedule

SHAPE = (3, 4, 4)
WIDTH = 2
PROFILED = 100


def _bucket(filename: str) -> str:
    if "/spectra/" in filename:
        return "spectra"
    if any(part in filename for part in ("/_refs/", "/_prims/", "/_prims_common/",
                                         "_meta_registrations", "/_decomp/")):
        return "torch decompositions and meta kernels"
    if "/_functorch/" in filename:
        return "torch.func"
    if filename == "~":
        return "C++ calls (ops, dispatch)"
    return "other Python (torch, spectra's caller)"


def python_time_split(fn, calls: int) -> dict[str, float]:
    """Own time (s per call) by the buckets of _bucket, from cProfile over `calls` calls."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        fn()
    profile.disable()
    split: Counter = Counter()
    for (filename, _, _), (_, _, own, _, _) in pstats.Stats(profile).stats.items():
        split[_bucket(filename)] += own
    return {name: seconds / calls for name, seconds in split.most_common()}


def per_call(fn, calls: int, device: torch.device) -> float:
    """Median over 5 rounds of the mean time of `calls` calls (s)."""
    rounds = []
    for _ in range(5):
        tick = time.perf_counter()
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rounds.append((time.perf_counter() - tick) / calls)
    return sorted(rounds)[2]


def compile_check(device: torch.device) -> str:
    """torch.compile of vmap over points of vmap over vectors of jvp of x -> w * x (w a
    parameter): 'ok' or the error's first line."""
    weight = torch.nn.Parameter(torch.tensor(2.0, device=device))

    def one(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return jvp(lambda y: weight * y, (x,), (v,))[1]

    def block(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return vmap(vmap(one, in_dims=(None, 0)))(x, v)

    x, v = torch.randn(2, 5, device=device), torch.randn(2, 3, 5, device=device)
    try:
        with torch.no_grad():
            got = torch.compile(block, dynamic=False)(x, v)
    except Exception as exc:  # the point is to record what fails
        return f"{type(exc).__name__}: {first_line(exc)}"
    return "ok" if torch.allclose(got, 2 * v) else "wrong values"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), torch.float32
    dim = math.prod(SHAPE)

    torch.manual_seed(0)
    net = SmallConvNet(width=WIDTH).to(device=device, dtype=dtype).eval()
    model = NetworkScoreModel(net, Schedule("ve"), "eps", shape=SHAPE)
    x = torch.randn(1, *SHAPE, device=device, dtype=dtype)
    batch = torch.randn(dim, *SHAPE, device=device, dtype=dtype)
    times = torch.full((dim,), 0.5, device=device, dtype=dtype)

    def forward_floor():
        with torch.no_grad():
            net(batch, times)

    def dense(method: str, compiled: bool = False):
        path = AutodiffPath(method, compiled=compiled)
        return lambda: jacobian_at(model, x, 0.5, "eps", method, batch_size=dim, path=path)

    fns = {"forward_D_batched": forward_floor, "dense_jvp": dense("jvp"),
           "dense_jvp_compiled": dense("jvp", compiled=True), "dense_vjp": dense("vjp")}
    tick = time.perf_counter()
    fns["dense_jvp_compiled"]()
    compile_s = time.perf_counter() - tick
    res = interleaved(fns, dict.fromkeys(fns, args.repeats), device)
    split = python_time_split(dense("jvp"), PROFILED)

    tangent = torch.randn(dim, *SHAPE, device=device, dtype=dtype)
    zero = torch._efficientzerotensor(tangent.shape, dtype=dtype, device=device)
    other = torch.randn_like(tangent)
    adds = {"plain_add_s": per_call(lambda: tangent + other, 200, device),
            "zero_tensor_add_s": per_call(lambda: tangent + zero, 200, device)}

    floor = res["forward_D_batched"]["median_s"]
    result = {
        "benchmark": "jvp_overhead",
        "command": "python benchmarks/jvp_overhead.py " + " ".join(sys.argv[1:]),
        "environment": environment(device),
        "config": {"net": f"SmallConvNet(width={WIDTH})", "shape": list(SHAPE), "D": dim,
                   "dtype": "float32", "batch_size": dim},
        **res,
        "ratio_jvp_over_forward_median": res["dense_jvp"]["median_s"] / floor,
        "ratio_compiled_jvp_over_forward_median": res["dense_jvp_compiled"]["median_s"] / floor,
        "ratio_vjp_over_forward_median": res["dense_vjp"]["median_s"] / floor,
        "compile_s": compile_s,
        "jvp_python_time_split_s": split,
        "add_of_a_tangent": adds,
        "compile_nested_vmap_jvp_of_a_parameter_product": compile_check(device),
    }
    path = write(f"jvp_overhead_{device.type}", result)
    print(f"forward floor {floor * 1e6:.0f} us, dense jvp {res['dense_jvp']['median_s'] * 1e6:.0f} us "
          f"({result['ratio_jvp_over_forward_median']:.1f}x), compiled "
          f"{res['dense_jvp_compiled']['median_s'] * 1e6:.0f} us "
          f"({result['ratio_compiled_jvp_over_forward_median']:.1f}x), dense vjp "
          f"{res['dense_vjp']['median_s'] * 1e6:.0f} us ({result['ratio_vjp_over_forward_median']:.1f}x)")
    for name, seconds in split.items():
        print(f"  jvp, profiled own time in {name}: {seconds * 1e6:.0f} us")
    print(f"add of a tangent: plain {adds['plain_add_s'] * 1e6:.1f} us, "
          f"efficient zero {adds['zero_tensor_add_s'] * 1e6:.1f} us")
    print("torch.compile of nested vmap(jvp): "
          f"{result['compile_nested_vmap_jvp_of_a_parameter_product']}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
