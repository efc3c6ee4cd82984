"""Reproduce the synthetic study of [V] (Ventura et al., ICLR 2025) and the memorization result of
[A] / [B] with spectra's own commands, from scratch, and write docs/reproduction.md.

    python experiments/reproduce_synthetic.py            # about 25 minutes on 2 CPU cores

Every network is trained by `spectra train`, measured by `spectra estimate` and compared by
`spectra compare-theory`, each run as a subprocess exactly as a user would type it (the commands
are listed in the page). The parts (theory.md 3.2-3.5):

1. demo: the shipped demo's recipe (D = 100, m = 40, variances 1 and 0.05, gaussian embedding):
   the dimension at the smallest tau, the intermediate gap and its tau_max, the phase order;
2. unequal groups: m1 = 30 directions of variance 1 and m2 = 10 of 0.05, then the variances
   swapped: the intermediate gap moves from index 30 to index 10;
3. memorization: the same manifold trained on N = 20 points: its dimension against tau beside the
   exact empirical score of those points and the network trained on fresh samples (part 1);
4. the normal directions: the atom at -1 of the theory against the trained network's values.

`--scale 0.01` shrinks every training to 1% of its steps (a smoke test of the pipeline; its
numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import spectra  # noqa: E402
from spectra.arrays import load_array  # noqa: E402
from spectra.models import load_model  # noqa: E402
from spectra.schedules import get_schedule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_SPEC = ROOT / "data" / "demo.toml"
STEPS = {"demo": 60000, "unequal": 60000, "swapped": 60000, "memorize": 120000}
N_TRAIN = 20
N_TIMES = 40

MANIFOLD = """kind = "gaussian"
ambient_dim = 100
variance_groups = {groups}
embedding = "gaussian"
seed = 0

[schedule]
name = "ve"
sigma_min = 0.01
sigma_max = 50.0
"""


class Study:
    def __init__(self, work: Path, docs: Path, scale: float, n_times: int, reuse: bool) -> None:
        self.work, self.docs, self.scale, self.n_times, self.reuse = work, docs, scale, n_times, reuse
        self.figures = docs / "reproduction"
        self.commands: list[str] = []
        self.seconds: dict[str, float] = {}

    def command(self, *args: str | Path) -> list[str]:
        """The arguments of one spectra command, listed (as `spectra ...`) for the page."""
        args = [str(a) for a in args] + ([] if args[0] == "compare-theory" else ["--quiet"])
        self.commands.append("spectra " + " ".join(a.replace(str(self.work) + "/", "") for a in args))
        return args

    def execute(self, args: list[str], label: str | None = None, threads: int | None = None) -> None:
        """Run one listed command, timing it under `label` (if given)."""
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spectra_cli", *args], check=True, cwd=self.work,
                       stdout=subprocess.DEVNULL, env=env)
        if label:
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

    def train_all(self, jobs: dict[str, tuple[Path, ...]]) -> dict[str, Path]:
        """Train every job {name: (spec, *extra options)}, two at a time on one thread each (the
        2-core machine's best throughput; the weights differ from a 2-thread run by round-off).
        With --reuse, a checkpoint already at its step count is listed but not retrained."""
        todo = {}
        for name, (spec, *extra) in jobs.items():
            out = self.work / f"{name}.pt"
            steps = max(1, int(STEPS[name] * self.scale))
            args = self.command("train", "--data", spec, "--out", out, "--steps", steps, "--overwrite",
                                *extra)
            if self.reuse and out.exists() and int(torch.load(out, weights_only=True)["step"]) == steps:
                self.seconds[f"train {name} (reused)"] = 0.0
            else:
                todo[name] = args
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda name: self.execute(todo[name], f"train {name}", threads=1), todo))
        return {name: self.work / f"{name}.pt" for name in jobs}

    def measure(self, name: str, model: Path, *extra: str | Path, theory: tuple = ()) -> dict:
        """Estimate on a grid log-uniform in tau between the default grid's ends, then compare
        (with `theory`, compare-theory's options naming the theory, where the run has none)."""
        run = self.work / f"{name}.h5"
        self.execute(self.command("estimate", "--model", model, "--out", run, "--times",
                                  tau_uniform_times(self.n_times), "--overwrite", *extra), f"estimate {name}")
        self.execute(self.command("compare-theory", run, "--out", self.work / f"{name}-theory", *theory))
        return json.loads((self.work / f"{name}-theory" / "metrics.json").read_text())


def tau_uniform_times(n: int) -> str:
    """n times of the demo's ve schedule whose tau are log-spaced between those of the default
    grid's ends (so the smallest tau is the default grid's smallest)."""
    schedule = get_schedule("ve", sigma_min=0.01, sigma_max=50.0)
    lo, hi = schedule.default_range
    fine = np.linspace(lo, hi, 200001)
    log_tau = np.log(schedule.tau(fine))
    times = np.interp(np.linspace(log_tau[0], log_tau[-1], n), log_tau, fine)
    times[0], times[-1] = lo, hi
    return ",".join(f"{t:.10g}" for t in times)


def phase_order(metrics: dict, key: str) -> list[str]:
    """The sequence of phase labels from large to small tau, repeats merged."""
    labels = [row[key] for row in sorted(metrics["times"], key=lambda r: -r["tau"]) if row[key]]
    return [lab for i, lab in enumerate(labels) if i == 0 or lab != labels[i - 1]]


def gap(metrics: dict, side: str) -> dict | None:
    """The widest intermediate gap on one side (predicted or measured) between tangent groups:
    above the predicted manifold gap (a measured run whose smallest tau does not show its normal
    directions as one cluster lists the manifold gap among its intermediate gaps)."""
    m = metrics["phases"]["predicted"]["manifold_gap_index"]
    gaps = [g for g in metrics["phases"][side]["intermediate_gaps"] if m is None or g["index"] < m]
    return max(gaps, key=lambda g: g["width_max"]) if gaps else None


def dimension_curve(metrics: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tau, median over anchors of the measured dimension; 0 where no gap is visible)."""
    rows = sorted(metrics["times"], key=lambda r: r["tau"])
    dims = [np.median([d if d is not None else 0 for d in r["measured_dimension_per_anchor"]]) for r in rows]
    return np.array([r["tau"] for r in rows]), np.array(dims)


def normal_values(run: Path, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(tau, eigenvalues of sigma^2 sym(J_score) below the m tangent ones: (T, N * (D - m)))."""
    traj = spectra.load(run)
    mu = traj["sym_eigenvalues"] * traj["sigma"][None, :, None] ** 2
    mu = -np.sort(-mu, axis=-1)[..., m:]
    return traj["tau"], mu.transpose(1, 0, 2).reshape(len(traj["tau"]), -1)


def loss_by_time(specs: dict[str, Path], points: Path, n_times: int, seed: int = 0) -> dict:
    """The training loss E||epshat - eps||^2 on the training points of each model in `specs`, at
    n_times midpoints of t in [0, 1] (256 draws of x0 and eps each, the same for every model) and
    averaged over them (t is uniform in training): for the memorizing network, the empirical
    score of its points (the memorizing optimum) and the manifold's exact score (what a network
    that generalizes perfectly pays). {"t", "sigma", name: per-time losses, "mean": {name: mean}}."""
    models = {name: load_model(str(spec)) for name, spec in specs.items()}
    for model in models.values():
        model.to("cpu", torch.float64)
    x = load_array(points)
    schedule = get_schedule("ve", sigma_min=0.01, sigma_max=50.0)
    rng = np.random.default_rng(seed)
    times = (np.arange(n_times) + 0.5) / n_times
    table = {"t": times, "sigma": schedule.sigma(times), **{name: [] for name in models}}
    with torch.no_grad():
        for t in times:
            alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
            x0 = torch.as_tensor(x[rng.integers(0, len(x), 256)])
            eps = torch.as_tensor(rng.standard_normal(x0.shape))
            for name, model in models.items():
                pred = model.target(alpha * x0 + sigma * eps, float(t), "eps")
                table[name].append(float((pred - eps).pow(2).sum(1).mean()))
    table["mean"] = {name: float(np.mean(table[name])) for name in models}
    return table


def last_loss(ck: Path) -> float:
    return float(torch.load(ck, weights_only=True)["losses"][-20:].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "experiments" / "work")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--scale", type=float, default=1.0, help="Fraction of the training steps.")
    parser.add_argument("--n-times", type=int, default=N_TIMES, help="Times per run.")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep checkpoints in --work already trained to their step count.")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    study = Study(args.work.resolve(), args.docs.resolve(), args.scale, args.n_times, args.reuse)
    study.figures.mkdir(parents=True, exist_ok=True)
    work = study.work

    shutil.copy(DEMO_SPEC, work / "demo.toml")
    for name, groups in (("unequal", "[[1.0, 30], [0.05, 10]]"), ("swapped", "[[0.05, 30], [1.0, 10]]")):
        (work / f"{name}.toml").write_text(MANIFOLD.format(groups=groups))
    (work / "empirical.toml").write_text(
        'kind = "empirical"\npoints = "memorize.pt"\n\n[schedule]\nname = "ve"\nsigma_min = 0.01\n'
        "sigma_max = 50.0\n")
    # longest first, so the two lanes finish together
    ck = study.train_all({"memorize": (work / "demo.toml", "--n-train", str(N_TRAIN)),
                          "demo": (work / "demo.toml",), "unequal": (work / "unequal.toml",),
                          "swapped": (work / "swapped.toml",)})
    demo = study.measure("demo", ck["demo"])                                 # 1. the demo recipe
    unequal = {name: study.measure(name, ck[name]) for name in ("unequal", "swapped")}  # 2.
    mem = study.measure("memorize", ck["memorize"])                          # 3. memorization
    emp = study.measure("empirical", work / "empirical.toml", "--data", ck["memorize"],
                        theory=("--manifold", work / "demo.toml"))
    fresh = study.measure("fresh-at-points", ck["demo"], "--data", ck["memorize"])
    losses = loss_by_time({"network": ck["memorize"], "empirical": work / "empirical.toml",
                           "manifold": work / "demo.toml"}, ck["memorize"], 20 if args.scale >= 1 else 2)

    write_page(study, demo, unequal, mem, emp, fresh, losses, last_loss(ck["memorize"]),
               last_loss(ck["demo"]))


def write_page(study: Study, demo: dict, unequal: dict, mem: dict, emp: dict, fresh: dict,
               losses: dict, mem_loss: float, demo_loss: float) -> None:
    figs = study.figures
    for name in ("spectrum.png", "trajectories.png", "gaps.png"):
        shutil.copy(study.work / "demo-theory" / name, figs / f"demo-{name}")

    fig, ax = plt.subplots(figsize=(6, 4))
    for metrics, label, style in ((fresh, "network, fresh samples", "-o"),
                                  (mem, f"network, N = {N_TRAIN} points", "-s"),
                                  (emp, f"exact empirical score of the {N_TRAIN} points", "--")):
        ax.plot(*dimension_curve(metrics), style, label=label, ms=3)
    ax.set_xscale("log")
    ax.set_xlabel("tau = sigma^2 / alpha^2")
    ax.set_ylabel("measured dimension (median; 0: no gap)")
    ax.set_title("Memorization: dimension against tau at the training points")
    ax.legend()
    fig.tight_layout()
    fig.savefig(figs / "memorization.png", dpi=120)
    plt.close(fig)

    tau, normals = normal_values(study.work / "demo.h5", 40)
    picks = [0, int(np.argmin(np.abs(np.log(tau / 1e-2)))), int(np.argmin(np.abs(np.log(tau / 1.0))))]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in picks:
        ax.hist(normals[i], bins=40, range=(-1.3, -0.3), histtype="step",
                label=f"network, tau = {tau[i]:.2g}")
    ax.axvline(-1.0, color="k", ls="--", label="theory: atom at -1 (all tau)")
    ax.set_xlabel("normalized eigenvalue (sigma^2 sym J_score), the D - m = 60 lowest")
    ax.set_ylabel("count over anchors")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figs / "normal-bulk.png", dpi=120)
    plt.close(fig)

    small = min(demo["times"], key=lambda r: r["tau"])
    pg, mg = gap(demo, "predicted"), gap(demo, "measured")
    ratio = max(mg["tau_max"] / pg["tau_max"], pg["tau_max"] / mg["tau_max"]) if mg and pg else float("nan")
    order_pred, order_meas = phase_order(demo, "predicted_phase"), phase_order(demo, "measured_phase")
    def where(metrics: dict, side: str) -> str:
        g = gap(metrics, side)
        return "none" if g is None else f"{g['index']} (tau_max {g['tau_max']:.3g})"

    mem_small = min(mem["times"], key=lambda r: r["tau"])
    emp_small = min(emp["times"], key=lambda r: r["tau"])
    fresh_small = min(fresh["times"], key=lambda r: r["tau"])
    normal0 = normals[0]
    bulk_rows = "\n".join(
        f"| {tau[i]:.3g} | {normals[i].mean():.3f} | {normals[i].std():.3f} | {normals[i].min():.3f} | "
        f"{normals[i].max():.3f} |" for i in range(0, len(tau), max(1, len(tau) // 10)))
    spread = float(np.median(normals.std(axis=1)))
    verdict = (f"Yes: the median spread over tau is a standard deviation of {spread:.3f}"
               if spread > 0.01 else f"No: the median spread over tau is only {spread:.3g}")
    explanation = "" if spread <= 0.01 else f"""
The trained demo network spreads them into a bulk: at tau = {tau[picks[2]]:.2g} its mean is
{normals[picks[2]].mean():.3f} (std {normals[picks[2]].std():.3f}), at tau = {tau[picks[1]]:.2g}
{normals[picks[1]].mean():.3f} (std {normals[picks[1]].std():.3f}), and at the smallest tau
{normal0.mean():.3f} (std {normal0.std():.3f}):
there an eps-predicting network must reach a gain of order 1/sigma in the normal directions to
cancel them, and falls short. The manifold gap stays the widest gap, so the dimension estimate is
unaffected; compare-theory's measured phases accept such a bulk as the normal directions
(spectra/analysis.py, `manifold_gap_position`)."""
    meas_ph, pred_ph = demo["phases"]["measured"], demo["phases"]["predicted"]

    def fmt(v):
        return "none" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    def dim(v):
        return "0 (no visible gap)" if v is None else str(v)

    rows = [
        (f"demo: dimension at the smallest tau ({small['tau']:.3g}), per anchor",
         "40", ", ".join(dim(d) for d in small["measured_dimension_per_anchor"])),
        ("demo: intermediate gap index", fmt(pg and pg["index"]), fmt(mg and mg["index"])),
        ("demo: intermediate gap tau_max", fmt(pg and pg["tau_max"]),
         f"{fmt(mg and mg['tau_max'])} (factor {ratio:.2f})"),
        ("demo: trivial phase ends at tau", fmt(pred_ph["trivial_end_tau"]), fmt(meas_ph["trivial_end_tau"])),
        ("demo: manifold gap open below tau", fmt(pred_ph["manifold_gap_open_tau"]),
         fmt(meas_ph["manifold_gap_open_tau"])),
        ("demo: phases, large to small tau", " → ".join(order_pred), " → ".join(order_meas)),
        ("unequal (30 of variance 1, 10 of 0.05): gap index", where(unequal["unequal"], "predicted"),
         where(unequal["unequal"], "measured")),
        ("swapped (30 of 0.05, 10 of 1): gap index", where(unequal["swapped"], "predicted"),
         where(unequal["swapped"], "measured")),
        (f"memorization: dimension at the smallest tau, N = {N_TRAIN} network",
         f"{dim(emp_small['measured_dimension'])} (exact empirical score)",
         dim(mem_small["measured_dimension"])),
        ("memorization: same anchors, fresh-sample network", "40", dim(fresh_small["measured_dimension"])),
        ("memorization: training loss on the points, t uniform",
         f"{losses['mean']['empirical']:.3g} memorizing optimum; {losses['mean']['manifold']:.3g} "
         "exact manifold score", f"{losses['mean']['network']:.3g} (EMA weights; {mem_loss:.3g} "
         "in training, last 1000 steps)"),
        ("normal directions at the smallest tau", "atom at -1",
         f"bulk: mean {normal0.mean():.3f}, std {normal0.std():.3f}, range [{normal0.min():.3f}, "
         f"{normal0.max():.3f}]"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    by_time = "\n".join(
        f"| {t:.3f} | {sg:.3g} | {a:.3g} | {b:.3g} | {c:.3g} |"
        for t, sg, a, b, c in zip(losses["t"], losses["sigma"], losses["network"], losses["empirical"],
                                  losses["manifold"], strict=True))
    grid = tau_uniform_times(study.n_times)
    commands = "\n".join([f"TIMES={grid}"] + [c.replace(grid, "$TIMES") for c in study.commands])
    times = ", ".join(k if k.endswith("(reused)") else f"{k} {v / 60:.1f} min"
                      for k, v in study.seconds.items())
    page = f"""# Reproduction: the synthetic study of [V] and memorization ([A], [B])

Generated by `python experiments/reproduce_synthetic.py` (scale {study.scale}; torch
{torch.__version__}, {spectra.__name__} from this repository). Do not edit by hand: rerun it.
Networks: `spectra train`'s residual MLP (width 128, two residual blocks), eps prediction under
ve (sigma 0.01 to 50), float64, Adam, EMA weights analysed. Every run measures 8 anchors on
{study.n_times} times whose tau = sigma^2 are log-spaced between the ends of `spectra estimate`'s default
grid ({small['tau']:.3g} to 2500), the Jacobian of the score with `--method auto` (float64 JVPs).
Predictions are compare-theory's exact random-matrix theory of each data spec (theory.md 3.2-3.4),
at resolution 0.1.

## Measured against predicted

| quantity | predicted | measured |
|---|---|---|
{table}

Training loss of the fresh-sample demo network over its last 1000 steps: {demo_loss:.3g}.

The memorizing network's loss on its {N_TRAIN} training points by noise level, against the exact
empirical score of those points (the memorizing optimum) and the manifold's exact score:

| t | sigma | network (N = {N_TRAIN}) | empirical score | manifold score |
|---|---|---|---|---|
{by_time}

## Figures

The demo network's spectra over tau against the theory (compare-theory's own figures):
![spectrum](reproduction/demo-spectrum.png)
![trajectories](reproduction/demo-trajectories.png)
![gaps](reproduction/demo-gaps.png)

Memorization: the network trained on {N_TRAIN} points, the exact empirical score of the same
points, and the network trained on fresh samples, all at the same 8 of the training points:
![memorization](reproduction/memorization.png)

The D - m = 60 lowest eigenvalues of the demo network, where the theory has an atom at -1:
![normal bulk](reproduction/normal-bulk.png)

## Does a trained network show a bulk where the theory has an atom at -1?

{verdict}. The theory puts all D - m = 60 normal eigenvalues of the
normalized Jacobian exactly at -1 at every tau (an atom).{explanation} The 60 lowest eigenvalues
of sigma^2 sym(J_score) over the 8 anchors:

| tau | mean | std | min | max |
|---|---|---|---|---|
{bulk_rows}

## Commands run

```
{commands}
```

Wall time: {times}.
"""
    (study.docs / "reproduction.md").write_text(page)


if __name__ == "__main__":
    main()
