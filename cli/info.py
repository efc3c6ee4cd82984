"""`spectra info`: what a run file holds, as a dict and as text."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from spectra.store import load


def summary(path: str) -> dict[str, Any]:
    """JSON-ready summary of a run file."""
    run = load(path)
    a = run.attrs
    t, tau = run["t"], run["tau"]
    done = run["done"]
    sv = run["singular_values"]
    n, nt, k = sv.shape
    first = sv[:, 0][done[:, 0]]
    last = sv[:, -1][done[:, -1]]
    return {
        "path": str(path),
        "format_version": a["format_version"],
        "spectra_version": a.get("spectra_version"),
        "created": a.get("created"),
        "complete": bool(a.get("complete")),
        "done": int(done.sum()),
        "total": int(done.size),
        "model": a.get("model"),
        "schedule": json.loads(a.get("schedule") or "{}"),
        "parameterization": a.get("parameterization"),
        "target": a.get("target"),
        "method": a.get("method"),
        "method_used": a.get("method_used"),
        "autodiff": json.loads(a.get("autodiff") or "{}"),
        "at": a.get("at"),
        "dtype": a.get("dtype"),
        "device": a.get("device"),
        "seed": a.get("seed"),
        "n_anchors": n,
        "n_times": nt,
        "k": k,
        "sample_shape": list(run["x0"].shape[1:]),
        "t_range": [float(t.min()), float(t.max())],
        "tau_range": [float(tau.min()), float(tau.max())],
        "seconds_total": float(np.nansum(run["seconds"])),
        "max_asymmetry": _nanmax(run["asymmetry"]),
        "first_time_sv_range": _range(first),
        "last_time_sv_range": _range(last),
        "theory": any(name.startswith("theory/") for name in run.arrays),
        "vectors": int(run["right_vectors"].shape[2]) if "right_vectors" in run else 0,
        **_topk_summary(run),
    }


def _topk_summary(run) -> dict[str, Any]:
    """Certificates and product counts of a top-k run (empty for dense runs)."""
    if "residuals" not in run:
        return {}
    done = run["done"]
    rel = run["residuals"][done] / run["singular_values"][done]
    products = (run["jvp_products"] + run["vjp_products"])[done]
    return {
        "max_residual_over_value": _nanmax(rel) if rel.size else None,
        "products_per_jacobian": [float(products.min()), float(products.max())] if products.size else None,
    }


def _nanmax(a: np.ndarray) -> float | None:
    return None if np.all(np.isnan(a)) else float(np.nanmax(a))


def _range(values: np.ndarray) -> list[float] | None:
    if values.size == 0 or np.all(np.isnan(values)):
        return None
    return [float(np.nanmin(values)), float(np.nanmax(values))]


def _numbers(table: Any) -> dict[str, float]:
    """The numeric entries of a recorded table (a damaged file's may hold anything)."""
    if not isinstance(table, dict):
        return {}
    return {str(k): float(v) for k, v in table.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _autodiff_line(path: dict[str, Any]) -> list[str]:
    """How the products were taken, when autodiff ran (none for finite differences)."""
    if path.get("engine", "none") == "none":
        return []
    compiled = " (compiled)" if path.get("compiled") else ""
    line = f"  autodiff    {path['engine']}{compiled}, context {path['context']}"
    if path.get("tried"):
        line += f" (after {len(path['tried'])} failed path(s): {path['tried'][0]['error'][:80]})"
    lines = [line]
    timed = path.get("timings") if isinstance(path.get("timings"), dict) else {}
    paths = _numbers(timed.get("paths"))
    if paths:
        ranked = sorted(paths.items(), key=lambda item: item[1])
        fastest = ", ".join(f"{label} {1e6 * s:.3g} us" for label, s in ranked)
        lines.append(f"  measured    per product: {fastest}")
    block = timed.get("block")
    blocks = _numbers(block.get("seconds_per_product")) if isinstance(block, dict) else {}
    if blocks:
        shown = ", ".join(f"{b}: {1e6 * s:.3g} us" for b, s in blocks.items())
        lines.append(f"  block size  per product by block size: {shown}")
    return lines


def describe(info: dict[str, Any]) -> str:
    """Human-readable lines."""
    sched = info["schedule"]
    consts = ", ".join(f"{k}={v:g}" if not isinstance(v, list) else f"{k}: table of {len(v)}"
                       for k, v in sched.items() if k != "name")
    status = "complete" if info["complete"] else f"incomplete ({info['done']}/{info['total']})"
    shape = "x".join(str(s) for s in info["sample_shape"])
    lines = [
        f"{info['path']}: spectra trajectory v{info['format_version']}, {status}",
        f"  model       {info['model']}",
        f"  schedule    {sched.get('name')}" + (f" ({consts})" if consts else ""),
        f"  target      {info['target']} (model predicts {info['parameterization']})",
        f"  method      {info['method']} -> ran {info['method_used']}, {info['dtype']} on "
        f"{info['device']}, at {info['at']}, seed {info['seed']}",
        *_autodiff_line(info["autodiff"]),
        f"  grid        {info['n_anchors']} anchors of shape {shape} x {info['n_times']} times, "
        f"t in [{info['t_range'][0]:g}, {info['t_range'][1]:g}], "
        f"tau in [{info['tau_range'][0]:.3g}, {info['tau_range'][1]:.3g}]",
        f"  values      K = {info['k']} per Jacobian"
        + (f", with the top {info['vectors']} singular vector pairs" if info["vectors"] else "")
        + f"; {info['seconds_total']:.2f} s in all",
    ]
    for label, key in (("smallest t", "first_time_sv_range"), ("largest t", "last_time_sv_range")):
        rng = info[key]
        if rng is not None:
            lines.append(f"  {label:<11} singular values in [{rng[0]:.4g}, {rng[1]:.4g}]")
    if info["max_asymmetry"] is not None:
        lines.append(f"  asymmetry   max ||J - J^T||_F / ||J||_F = {info['max_asymmetry']:.2e}")
    if info.get("max_residual_over_value") is not None:
        lo, hi = info["products_per_jacobian"]
        lines.append(f"  top-k       max residual / value = {info['max_residual_over_value']:.2e}; "
                     f"{lo:.0f} to {hi:.0f} JVPs + VJPs per Jacobian")
    if info["theory"]:
        lines.append("  theory      predictions stored (compare-theory)")
    return "\n".join(lines)
