"""spectra against the exact peers a researcher could use, on the same model and point, in one process.

Model: the random-weight U-Net of tests/assets/unet.py (vp schedule, eps parameterization); function:
its denoiser at t = 0.3, at one seeded point x = alpha(t) N(0, I) of D = 3 S^2 entries.

dense: the D x D Jacobian at x by spectra (spectra_auto | jvp | vjp, see spectra_dense), by
  torch.func.jacrev (chunk_size 64, 128, 256) and jacfwd (it takes no chunk_size: jacfwd_chunkC is
  its construction, vmap of jvp over the identity, with vmap's chunk_size; unchunked it needs ~18
  GB at S = 32), both under torch.no_grad as spectra runs them (else they also record a graph to
  the weights), by torch.autograd.functional.jacobian (vectorize False, True) and by per-direction
  central differences (2D evaluations of batch 1, step eps^(1/3) max(1, rms(x))). Beside them: the
  cost floor (D forward evaluations in batches of 256) and the stacked-score estimator of Stanczuk
  et al. (4D scores at x + sigma(t) N(0, I) in batches of 256, then the SVD of the 4D x D stack).
  The latter is not a Jacobian: its top-16 values divided by its largest are compared with the same
  profile of the exact Jacobian, as max_i |p_i - q_i| / q_i. Every Jacobian is compared with a
  float64 torch.autograd.functional.jacobian: max |J - J_ref| / max |J_ref|.
topk: the k largest singular values of that Jacobian by spectra (spectra_topk), by
  scipy.sparse.linalg.svds (arpack, propack, lobpcg) on a LinearOperator of exact products
  (torch.func.jvp, and one torch.func.vjp pullback per point, vmapped over columns), by
  torch.lobpcg on J^T J and by a randomized SVD (Halko-Martinsson-Tropp, p = 10, q = 2). After each
  row, outside the timing, fresh products certify every triple it returned:
  sqrt(||J v_i - s_i u_i||^2 + ||J^T u_i - s_i v_i||^2) / s_i (u_i = J v_i / ||J v_i|| for rows
  that return no left vectors). svds squares its tol before handing it on (to eigsh and lobpcg on
  J^T J, and to PROPACK), so tol = 1e-6 asks for far smaller residuals than 1e-6 s_i; the row
  arpack_tol1e-3 (eigsh tol 1e-6: residuals ~1e-6 s_i, as spectra's) is the like-for-like one.
  Products: vectors multiplied, JVPs plus VJPs (a J^T J application is one of each).

    python benchmarks/peers.py dense [--sizes 16 32] [--dtypes float32 float64] [--repeats 3]
    python benchmarks/peers.py topk [--sizes 32 64] [--k 16 32] [--dtype float64] [--repeats 3]
    either with [--device cpu|cuda] [--width 16] [--skip ROW ...] [--quick]

Timing: each row runs once first, untimed (its output is what gets checked, its products are what
gets counted); a row whose first call took over 60 s is not run again and reports that call
(repeats 1, timed_on_first_call); the others are timed --repeats times round-robin
(common.interleaved). A row that raises reports its error. --quick (S = 8, width 8: the least the
U-Net's GroupNorm takes; k = 4; 1 repeat) is a smoke check of seconds, written apart (_quick).
On a shared CPU, OMP_NUM_THREADS=1 avoids OpenMP threads spinning against other processes.
Results: benchmarks/results/peers_<part>_<device>_<dtype(s)>[_quick].json.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import scipy
import torch
from common import environment, interleaved, write
from scipy.sparse.linalg import LinearOperator, svds

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "assets"))
from unet import unet  # noqa: E402

from spectra.jacobian import jacobian_at, topk_at  # noqa: E402
from spectra.jacobian.methods import probe_path  # noqa: E402
from spectra.jacobian.tuning import fastest_block, fastest_chunk, fastest_path  # noqa: E402
from spectra.limits import available_memory  # noqa: E402
from spectra.models import NetworkScoreModel  # noqa: E402
from spectra.schedules import Schedule  # noqa: E402
from spectra.sweep.setup import disable_tf32  # noqa: E402

T, BATCH, TOL, SLOW_S, PROFILE = 0.3, 256, 1e-6, 60.0, 16
EXACT = ("spectra_", "jacrev", "jacfwd", "autograd_")


#: what spectra measured before its rows, per (part, dtype): as `spectra estimate` does once per sweep
CHOICES: dict = {}


def spectra_choice(model: NetworkScoreModel, x: torch.Tensor, method: str, k: int = 0) -> dict:
    """The path, chunk and block size `spectra estimate` would take at x (spectra.sweep.setup):
    auto times every autodiff path (tuning.fastest_path) and, on the CPU, chunk sizes
    (tuning.fastest_chunk); topk times block sizes (tuning.fastest_block). Measured once per
    model, dtype and method, outside the timed rows; the seconds it took are recorded."""
    key = (id(model), x.dtype, method, k)
    if key not in CHOICES:
        tick = time.perf_counter()
        dim = x.numel()
        if method == "auto":
            path = fastest_path(model, x, T, "denoiser")
            batch = BATCH
            if x.device.type == "cpu":
                guess = dim * x.element_size() * model.activation_factor
                batch, path.timings["chunk"] = fastest_chunk(model, x, T, "denoiser", path, "auto", dim,
                                                             available_memory() // 4, guess)
            choice = {"path": path, "batch_size": batch}
        else:
            path = probe_path(model, x, T, "denoiser", method)
            choice = {"path": path, "batch_size": BATCH}
            if method == "topk":
                choice["block"], path.timings["block"] = fastest_block(model, x, T, "denoiser", path, k, 1,
                                                                       BATCH)
        choice["measured_s"] = time.perf_counter() - tick
        CHOICES[key] = choice
    return CHOICES[key]


def recorded(choice: dict) -> dict:
    """A choice as JSON."""
    return {"autodiff": choice["path"].to_dict(), "batch_size": choice["batch_size"],
            "block": choice.get("block"), "measured_s": choice["measured_s"]}


def spectra_dense(model: NetworkScoreModel, x: torch.Tensor, method: str) -> torch.Tensor:
    """spectra's D x D Jacobian of the denoiser at x (*shape) on the path and chunk size
    `spectra estimate --method METHOD` takes (spectra_choice); method: auto | jvp | vjp."""
    choice = spectra_choice(model, x, method)
    path = choice["path"]
    return jacobian_at(model, x[None], T, "denoiser", path.method, batch_size=choice["batch_size"],
                       path=path)[0]


def spectra_topk(model: NetworkScoreModel, x: torch.Tensor, k: int) -> dict:
    """spectra's top k of the denoiser's Jacobian at x (*shape), with the measured block size:
    values (k,) descending, residuals (k,) (its own certificates), jvp and vjp (ints: products
    spent), converged (bool), u and v: (D, k) left and right singular vectors."""
    choice = spectra_choice(model, x, "topk", k)
    r = topk_at(model, x[None], T, "denoiser", k, tol=TOL, batch_size=BATCH, block_size=choice["block"],
                path=choice["path"])
    return {"values": r.singular_values[0], "residuals": r.residuals[0], "jvp": int(r.n_jvp[0]),
            "vjp": int(r.n_vjp[0]), "converged": bool(r.converged[0]), "u": r.left_vectors[0],
            "v": r.right_vectors[0]}


def setup(size: int, width: int, dtype: torch.dtype, device) -> tuple[NetworkScoreModel, torch.Tensor]:
    """The model (the same weights in every dtype) and the point x (3, S, S)."""
    net = unet(size, width).to(device=device, dtype=dtype).eval()
    model = NetworkScoreModel(net, Schedule("vp"), "eps", shape=(3, size, size))
    gen = torch.Generator().manual_seed(0)
    x = model.alpha_sigma(T)[0] * torch.randn(*model.shape, dtype=torch.float64, generator=gen)
    return model, x.to(device, dtype)


def flat(model: NetworkScoreModel):
    """z (D,) -> denoiser(z) (D,) at one point."""
    return lambda z: model.target(z.view(1, *model.shape), T, "denoiser").reshape(-1)


def run_rows(fns: dict, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Each row's first call (its output, or its error), then the timings (module docstring)."""
    outputs, rows = {}, {}
    for name, fn in fns.items():
        tick = time.perf_counter()
        try:
            outputs[name] = fn()
        except Exception as exc:  # a peer that fails is a result, not a crash
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {name}: {rows[name]['error'][:100]}", flush=True)
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first = time.perf_counter() - tick
        print(f"  {name}: first call {first:.3f} s", flush=True)
        rows[name] = {"first_call_s": first}
        if first > SLOW_S:
            rows[name].update(median_s=first, min_s=first, repeats=1, timed_on_first_call=True)
    again = {n: skip_first(fns[n]) for n in outputs if "median_s" not in rows[n]}
    for name, timing in (interleaved(again, dict.fromkeys(again, repeats), device) if again else {}).items():
        rows[name].update(timing, timed_on_first_call=False)
    return outputs, rows


def skip_first(fn):
    """fn, except that its first call (interleaved's warm-up; the row has just run) does nothing."""
    calls = iter([lambda: None])
    return lambda: next(calls, fn)()


# ---------------------------------------------------------------------------------------- dense


def forward_floor(model: NetworkScoreModel, x: torch.Tensor) -> None:
    dim = x.numel()
    batch = x.expand(min(BATCH, dim), *x.shape).contiguous()
    with torch.no_grad():
        for start in range(0, dim, BATCH):
            model.target(batch[: min(BATCH, dim - start)], T, "denoiser")


def fd_central(f, xf: torch.Tensor) -> torch.Tensor:
    h = torch.finfo(xf.dtype).eps ** (1 / 3) * max(1.0, float(xf.pow(2).mean().sqrt()))
    cols = []
    with torch.no_grad():
        for i in range(xf.numel()):
            plus, minus = xf.clone(), xf.clone()
            plus[i] += h
            minus[i] -= h
            cols.append((f(plus) - f(minus)) / (plus[i] - minus[i]))  # the steps as represented
    return torch.stack(cols, 1)


def jacfwd_chunked(f, xf: torch.Tensor, chunk: int) -> torch.Tensor:
    basis = torch.eye(xf.numel(), dtype=xf.dtype, device=xf.device)
    return torch.func.vmap(lambda e: torch.func.jvp(f, (xf,), (e,))[1], chunk_size=chunk)(basis).T


def stacked_scores(model: NetworkScoreModel, x: torch.Tensor) -> torch.Tensor:
    dim, (_, sigma) = x.numel(), model.alpha_sigma(T)
    gen = torch.Generator(device=x.device).manual_seed(1)
    rows = []
    with torch.no_grad():
        for start in range(0, 4 * dim, BATCH):
            n = min(BATCH, 4 * dim - start)
            noisy = x + sigma * torch.randn(n, *x.shape, dtype=x.dtype, device=x.device, generator=gen)
            rows.append(model.target(noisy, T, "score").reshape(n, dim))
    return torch.linalg.svdvals(torch.cat(rows))


def dense_fns(model: NetworkScoreModel, x: torch.Tensor) -> dict:
    f, xf, no_grad = flat(model), x.reshape(-1), torch.no_grad()
    fns = {"forward_floor": partial(forward_floor, model, x)}
    fns.update({f"spectra_{m}": partial(spectra_dense, model, x, m) for m in ("auto", "jvp", "vjp")})
    fns.update({f"jacrev_chunk{c}": no_grad(partial(torch.func.jacrev(f, chunk_size=c), xf))
                for c in (64, 128, 256)})
    fns.update({f"jacfwd_chunk{c}": no_grad(partial(jacfwd_chunked, f, xf, c)) for c in (64, 128, 256)})
    for name, vectorize in (("loop", False), ("vectorized", True)):
        fns[f"autograd_jacobian_{name}"] = partial(torch.autograd.functional.jacobian, f, xf,
                                                   vectorize=vectorize)
    fns["fd_central_loop"] = partial(fd_central, f, xf)
    fns["stacked_scores"] = partial(stacked_scores, model, x)
    return fns


def dense_case(size: int, width: int, dtype, device, repeats: int, skip, ref) -> dict:
    """Every dense row at one size and dtype; ref: the float64 reference Jacobian and its values."""
    model, x = setup(size, width, dtype, device)
    dim, (jac_ref, sv_ref) = x.numel(), ref
    outputs, rows = run_rows({n: f for n, f in dense_fns(model, x).items() if n not in skip}, repeats, device)
    for name, row in rows.items():
        out = outputs.pop(name, None)
        row["products"] = {"fd_central_loop": 2 * dim, "stacked_scores": 4 * dim}.get(name, dim)
        if name == "stacked_scores" and out is not None:
            n = min(PROFILE, len(out))
            p, q = out[:n].double().cpu() / float(out[0]), sv_ref[:n] / sv_ref[0]
            row["profile_rel_error_top16"] = float(((p - q).abs() / q).max())
        elif out is not None and name != "forward_floor":
            err = (out.reshape(dim, dim).double().cpu() - jac_ref).abs().max() / jac_ref.abs().max()
            row["max_abs_error"] = float(err)
    auto = rows.get("spectra_auto", {}).get("median_s")
    for row in rows.values():
        if auto and "median_s" in row:
            row["ratio_to_spectra_auto"] = row["median_s"] / auto
    exact = [n for n, r in rows.items() if n.startswith(EXACT) and "median_s" in r]
    fastest = min(exact, key=lambda n: rows[n]["median_s"]) if exact else None
    within = bool(auto <= 1.1 * rows[fastest]["median_s"]) if auto and fastest else None
    choice = {m: recorded(c) for (i, _, m, _), c in CHOICES.items() if i == id(model)}
    return {"S": size, "D": dim, "dtype": str(dtype).removeprefix("torch."), "spectra_choice": choice,
            "rows": rows,
            "fastest_exact": fastest, "auto_within_1.1x_of_fastest": within}


def dense_part(args, device) -> tuple[dict, list]:
    cases = []
    for size in args.sizes:
        model64, x64 = setup(size, args.width, torch.float64, device)
        jac = torch.autograd.functional.jacobian(flat(model64), x64.reshape(-1)).cpu()
        for name in args.dtypes:
            cases.append(dense_case(size, args.width, getattr(torch, name), device, args.repeats, args.skip,
                                    (jac, torch.linalg.svdvals(jac))))
            print_dense(cases[-1])
    config = {"sizes": args.sizes, "D": [3 * s * s for s in args.sizes], "dtypes": args.dtypes,
              "fd_step": "eps^(1/3) * max(1, rms(x))", "stacked_scores_profile": "max_i rel error of "
              "top-16 s_i / s_1", "reference": "torch.autograd.functional.jacobian, float64, vectorize=False",
              "error": "max |J - J_ref| / max |J_ref|"}
    return config, cases


def print_dense(case: dict) -> None:
    print(f"S={case['S']} D={case['D']} {case['dtype']}: fastest exact {case['fastest_exact']}, "
          f"spectra_auto within 1.1x: {case['auto_within_1.1x_of_fastest']}")
    print(f"{'row':30s} {'median_s':>10s} {'min_s':>10s} {'rep':>3s} {'/auto':>7s} {'error':>9s}")
    for name, r in case["rows"].items():
        err = r.get("max_abs_error", r.get("profile_rel_error_top16"))
        print(f"{name:30s} ERROR {r['error'][:70]}" if "error" in r else
              f"{name:30s} {r['median_s']:10.4f} {r['min_s']:10.4f} {r['repeats']:3d} "
              f"{r.get('ratio_to_spectra_auto', float('nan')):7.2f} {'' if err is None else f'{err:9.1e}'}")


# ----------------------------------------------------------------------------------------- topk


class Products:
    """J V and J^T U (D, n) of the denoiser at x, BATCH columns at a time: vmapped torch.func.jvp
    and one torch.func.vjp pullback, reused; counts the columns multiplied."""

    def __init__(self, model: NetworkScoreModel, x: torch.Tensor) -> None:
        f = lambda z: model.target(z[None], T, "denoiser")[0]  # noqa: E731
        with torch.no_grad():  # torch.func differentiates all the same, without a graph to the weights
            _, pull = torch.func.vjp(f, x)
        self.x, self.dim, self.n_jvp, self.n_vjp = x, x.numel(), 0, 0
        self._jvp = torch.func.vmap(lambda v: torch.func.jvp(f, (x,), (v,))[1])
        self._vjp = torch.func.vmap(lambda u: pull(u)[0])

    def _apply(self, fn, cols: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([fn(c.T.reshape(-1, *self.x.shape)).reshape(-1, self.dim).T
                              for c in cols.to(self.x).split(BATCH, dim=1)], 1)

    def J(self, v: torch.Tensor) -> torch.Tensor:
        self.n_jvp += v.shape[1]
        return self._apply(self._jvp, v)

    def JT(self, u: torch.Tensor) -> torch.Tensor:
        self.n_vjp += u.shape[1]
        return self._apply(self._vjp, u)

    def linear_operator(self) -> LinearOperator:
        """For scipy: float64 numpy in and out."""
        def wrap(fn):
            return lambda a: fn(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)
                                                 .reshape(self.dim, -1))).double().cpu().numpy()
        return LinearOperator((self.dim, self.dim), matvec=lambda v: wrap(self.J)(v).ravel(),
                              rmatvec=lambda u: wrap(self.JT)(u).ravel(), matmat=wrap(self.J),
                              rmatmat=wrap(self.JT), dtype=np.float64)


class Gram(torch.Tensor):
    """A (D, D) stand-in for J^T J, without storage, that torch.lobpcg multiplies by torch.matmul."""

    @staticmethod
    def __new__(cls, ops: Products):
        base = torch.zeros((), dtype=ops.x.dtype, device=ops.x.device).expand(ops.dim, ops.dim)
        out = torch.Tensor._make_subclass(cls, base)
        out.ops = ops
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.matmul and isinstance(args[0], cls):
            return args[0].ops.JT(args[0].ops.J(args[1].as_subclass(torch.Tensor)))
        if func is torch.lobpcg:  # the public function hands a subclass back here unrun
            return torch._lobpcg._lobpcg(*args, **(kwargs or {}))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def triples(ops: Products, values, u, v, **extra) -> dict:
    order = np.argsort(-np.asarray(values))
    pick = lambda m: None if m is None else torch.as_tensor(np.ascontiguousarray(m))[:, order]  # noqa: E731
    return {"values": np.asarray(values)[order], "u": pick(u), "v": pick(v), "jvp": ops.n_jvp,
            "vjp": ops.n_vjp, **extra}


def svds_row(model, x, k: int, solver: str, tol: float) -> dict:
    ops, rng = Products(model, x), np.random.default_rng(0)
    v0 = rng.standard_normal(ops.dim)  # arpack, propack (lobpcg: only for k = 1, else rng)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u, s, vh = svds(ops.linear_operator(), k=k, tol=tol, v0=v0, solver=solver, rng=rng)
    return triples(ops, s, u, vh.T, warnings=sorted({str(w.message)[:200] for w in caught}))


def torch_lobpcg_row(model, x, k: int) -> dict:
    ops = Products(model, x)
    start = torch.randn(ops.dim, k, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    evals, evecs = torch.lobpcg(Gram(ops), k=k, X=start.to(x), tol=TOL, largest=True)
    return triples(ops, evals.clamp(min=0).sqrt().double().cpu().numpy(), None, evecs.cpu())


def randomized_svd(model, x, k: int, p: int = 10, q: int = 2) -> dict:
    """Halko, Martinsson & Tropp (2011): Algorithm 4.4 (re-orthonormalized power steps), then 5.1."""
    ops = Products(model, x)
    omega = torch.randn(ops.dim, k + p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    basis = torch.linalg.qr(ops.J(omega)).Q
    for _ in range(q):
        basis = torch.linalg.qr(ops.J(torch.linalg.qr(ops.JT(basis)).Q)).Q
    right, s, w_t = torch.linalg.svd(ops.JT(basis), full_matrices=False)  # J^T Q = V S W^T
    return triples(ops, s[:k].cpu().numpy(), (basis @ w_t.T)[:, :k].cpu(), right[:, :k].cpu())


def certificates(model, x, out: dict) -> np.ndarray | None:
    """Each residual / s_i, from fresh products (module docstring); None without right vectors."""
    if out.get("v") is None:
        return None
    ops, v = Products(model, x), out["v"].to(x)
    v = v / v.norm(dim=0)
    jv = ops.J(v)
    u = jv if out.get("u") is None else out["u"].to(x)
    u = u / u.norm(dim=0)
    s = torch.as_tensor(np.array(out["values"], dtype=np.float64)).to(x)
    res = ((jv - s * u).norm(dim=0) ** 2 + (ops.JT(u) - s * v).norm(dim=0) ** 2).sqrt() / s
    return res.double().cpu().numpy()


def topk_fns(model, x, k: int) -> dict:
    fns = {"spectra_topk": partial(spectra_topk, model, x, k)}
    fns.update({s: partial(svds_row, model, x, k, s, TOL) for s in ("arpack", "propack", "lobpcg")})
    fns["arpack_tol1e-3"] = partial(svds_row, model, x, k, "arpack", 1e-3)
    fns["torch_lobpcg_JtJ"] = partial(torch_lobpcg_row, model, x, k)
    fns["randomized_svd"] = partial(randomized_svd, model, x, k)
    return fns


def topk_case(size: int, width: int, dtype, device, k: int, repeats: int, skip) -> dict:
    model, x = setup(size, width, dtype, device)
    fns = {n: f for n, f in topk_fns(model, x, k).items() if n not in skip}
    outputs, rows = run_rows(fns, repeats, device)
    ref = np.asarray(outputs["spectra_topk"]["values"]) if "spectra_topk" in outputs else None
    for name, out in outputs.items():
        row, values = rows[name], np.asarray(out["values"], dtype=np.float64)
        row.update(values=values.tolist(), jvp=int(out["jvp"]), vjp=int(out["vjp"]),
                   products=int(out["jvp"] + out["vjp"]), products_per_value=(out["jvp"] + out["vjp"]) / k)
        row.update({key: np.asarray(out[key]).tolist() for key in ("residuals", "converged", "warnings")
                    if key in out})
        if ref is not None and len(values) == len(ref):
            row["max_rel_diff_vs_spectra"] = float(np.max(np.abs(values - ref) / ref))
        cert = certificates(model, x, out)
        row["max_certificate_over_value"] = None if cert is None else float(cert.max())
        row["certified_below_1e-6"] = None if cert is None else bool(np.all(cert < TOL))
        if out.get("u") is None:
            row["certificate_note"] = ("no vectors returned: not checked" if cert is None
                                       else "no left vectors returned: u_i = J v_i / ||J v_i||")
    choice = {m: recorded(c) for (i, _, m, _), c in CHOICES.items() if i == id(model)}
    case = {"S": size, "D": x.numel(), "k": k, "spectra_choice": choice, "rows": rows}
    spec = rows.get("spectra_topk", {})
    if "residuals" in spec:
        case["spectra_all_certified_own"] = bool(np.all(np.array(spec["residuals"]) < TOL * ref))
        case["spectra_all_certified_independent"] = spec["certified_below_1e-6"]
    for other in ("arpack", "arpack_tol1e-3"):
        if "median_s" in spec and "median_s" in rows.get(other, {}):
            tag = other.replace("arpack", "spectra_over_arpack")
            case[f"{tag}_time"] = spec["median_s"] / rows[other]["median_s"]
            case[f"{tag}_products"] = spec["products"] / rows[other]["products"]
    print_topk(case)
    return case


def topk_part(args, device) -> tuple[dict, list]:
    cases = [topk_case(s, args.width, getattr(torch, args.dtype), device, k, args.repeats, args.skip)
             for s in args.sizes for k in args.k]
    config = {"sizes": args.sizes, "D": [3 * s * s for s in args.sizes], "k": args.k, "dtype": args.dtype,
              "tol": TOL, "svds_inner_tol": "tol**2 (scipy hands it to eigsh, lobpcg and PROPACK)",
              "svds_defaults": "scipy's ncv and maxiter (lobpcg: 20 iterations; PROPACK: kmax = 10 k)",
              "torch_lobpcg": "tol 1e-6 on ||J^T J x - l x|| / (||x|| ||A X||_F / ||X||_F), niter 1000",
              "randomized_svd": {"oversampling": 10, "power_iterations": 2},
              "certificate": "sqrt(||J v - s u||^2 + ||J^T u - s v||^2) / s, fresh products"}
    return config, cases


def print_topk(case: dict) -> None:
    print(f"S={case['S']} D={case['D']} k={case['k']}: " + ", ".join(
        f"{key} {val:.3g}" if isinstance(val, float) else f"{key} {val}"
        for key, val in case.items() if key.startswith("spectra_")))
    print(f"{'row':18s} {'median_s':>10s} {'rep':>3s} {'products':>9s} {'per value':>9s} "
          f"{'max cert':>9s} {'vs spectra':>10s}")
    for name, r in case["rows"].items():
        cert, diff = (f"{r[key]:.1e}" if r.get(key) is not None else "-"
                      for key in ("max_certificate_over_value", "max_rel_diff_vs_spectra"))
        print(f"{name:18s} ERROR {r['error'][:80]}" if "error" in r else
              f"{name:18s} {r['median_s']:10.3f} {r['repeats']:3d} {r['products']:9d} "
              f"{r['products_per_value']:9.1f} {cert:>9s} {diff:>10s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["dense", "topk"])
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--k", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], help="row names to leave out")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.sizes = args.sizes or ([16, 32] if args.part == "dense" else [32, 64])
    if args.quick:
        args.sizes, args.width, args.k, args.repeats = [8], 8, [4], 1
    device = torch.device(args.device)
    disable_tf32()
    config, cases = (dense_part if args.part == "dense" else topk_part)(args, device)
    config.update(width=args.width, t=T, schedule="vp", parameterization="eps", target="denoiser",
                  point="alpha(t) * N(0, I), seed 0", batch_size=BATCH, repeats=args.repeats,
                  slow_s=SLOW_S, skip=args.skip, quick=args.quick)
    payload = {"benchmark": f"peers_{args.part}",
               "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:]),
               "environment": {**environment(device), "scipy": scipy.__version__, "numpy": np.__version__},
               "config": config, "cases": cases}
    dtypes = "_".join(args.dtypes) if args.part == "dense" else args.dtype
    path = write(f"peers_{args.part}_{device.type}_{dtypes}" + ("_quick" if args.quick else ""), payload)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
