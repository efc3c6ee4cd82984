"""Reproduce the memorization study of [B] (Buchanan et al., NeurIPS 2025) and [LD] (Achilli et al.)
with spectra's own commands, from scratch, and write docs/memorization.md.

    python experiments/reproduce_memorization.py          # about 30 minutes on 2 CPU cores

Every network is trained by `spectra train`, sampled and measured by `spectra memorization`,
`spectra estimate` (one run per snapshot with --model SNAPSHOTS) and `spectra crossover`, each run
as a subprocess exactly as a user would type it (the commands are listed in the page). The parts:

(a) digits (real data, scikit-learn's 8 x 8 images): U-Nets trained on the first N images for N from
    8 to all 1,797: the memorized fraction of their samples and the directions their denoiser keeps
    at small noise (docs/theory.md 3.5), beside the exact empirical score of the same N images;
(b) the isotropic mixture of [B] (theory.md 3.7): the weighted excess training losses of the exact
    generalizing denoiser and of the partially memorizing ones (the empirical score of M of the N
    training points, M = 0..N) measured on the training points, their crossover M against the
    prediction M*/N of `spectra crossover`, for three N (M* is linear in N);
(c) one digits network followed across its training snapshots: the directions kept and the
    memorized fraction against the step.

`--scale 0.01` shrinks every training to 1% of its steps, and any scale below 0.1 also takes two
training-set sizes of each part, 20 samples per model and 2 noise draws per loss (a smoke test of
the pipeline; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from commands import Commands, trained  # noqa: E402

import spectra  # noqa: E402
from spectra.models import load_model  # noqa: E402
from spectra.studies import snapshots  # noqa: E402
from spectra.studies.phases import measured_spectrum  # noqa: E402
from spectra.theory.memorization import critical_fraction, paper_grid, vp_sqrt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGIT_NS = (8, 32, 128, 512, 1797)
STEPS = 6000
SNAPSHOT_N, SNAPSHOTS = 32, 12
DELTA = 0.1
#: (b): the mixture of [B] (K clusters of variance 1 in dimension d, means on the sphere of radius
#: sqrt(d)), the training-set sizes, and the M grid in steps of N / 20
MIXTURE_D, MIXTURE_K, MIXTURE_NS = 50, 12, (100, 200, 400)

MIXTURE = """kind = "gmm"
preset = "isotropic"
ambient_dim = {d}
n_components = {k}
variance = 1.0
seed = 0

[schedule]
name = "vp-sqrt"
"""
EMPIRICAL = """kind = "empirical"
points = "{points}"
{memorized}
[schedule]
name = "{schedule}"
"""


class Study(Commands):
    def __init__(self, work: Path, docs: Path, scale: float, n_times: int, reuse: bool = False) -> None:
        super().__init__(work)
        self.docs, self.scale, self.n_times, self.reuse = docs, scale, n_times, reuse
        self.figures = docs / "memorization"
        self.started = time.perf_counter()

    def steps(self) -> int:
        return max(SNAPSHOTS, int(STEPS * self.scale))

    @property
    def smoke(self) -> bool:
        """A scale below 0.1: the pipeline's smoke test (see the module docstring)."""
        return self.scale < 0.1

    def generated(self) -> int:
        return 20 if self.smoke else 200

    # --- (a) and (c): digits -----------------------------------------------------------------
    def digits(self) -> dict:
        self.execute(self.command("dataset", "digits", "--out", "digits.npz", "--overwrite"), "dataset")
        x = np.load(self.work / "digits.npz")["x"]
        self.ns = (DIGIT_NS[0], SNAPSHOT_N) if self.smoke else DIGIT_NS
        for n in self.ns:
            np.save(self.work / f"digits{n}.npy", x[:n])
            (self.work / f"empirical{n}.toml").write_text(
                EMPIRICAL.format(points=f"digits{n}.npy", memorized="", schedule="ve"))
        steps = self.steps()
        every = max(1, steps // SNAPSHOTS)
        jobs = {n: self.command("train", "--data", "digits.npz:x", "--n-train", n, "--out", f"digits{n}.pt",
                                "--steps", steps, "--batch-size", 128, "--overwrite",
                                *(["--snapshot-every", every] if n == SNAPSHOT_N else []))
                for n in self.ns}
        if self.reuse:  # checkpoints already at their step count are listed, not retrained
            jobs = {n: job for n, job in jobs.items() if not trained(self.work / f"digits{n}.pt", steps)}
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: self.execute(jobs[n], f"train N = {n}", threads=1), jobs))
        rows = {}
        for n in self.ns:
            rows[n] = {"network": self.measure(f"digits{n}.pt", f"net{n}"),
                       "empirical": self.measure(f"empirical{n}.toml", f"emp{n}"),
                       "loss": last_loss(self.work / f"digits{n}.pt")}
        args = self.command("estimate", "--model", f"digits{SNAPSHOT_N}-snapshots", "--out", "snapshots",
                            "--n-samples", 8, "--n-times", self.n_times, "--generated", self.generated())
        shutil.rmtree(self.work / "snapshots", ignore_errors=True)
        self.execute(args, "estimate snapshots")
        snapshots = json.loads((self.work / "snapshots" / "summary.json").read_text())
        return {"rows": rows, "snapshots": snapshots}

    def measure(self, model: str, name: str) -> dict:
        """memorization (generated() samples) and the spectrum at 8 training digits over the default grid."""
        out = self.work / f"{name}-memorization"
        own = ["--train-data", f"digits{name[3:]}.npy"] if name.startswith("emp") else []
        self.execute(self.command("memorization", "--model", model, "--n", self.generated(), "--out", out,
                                  *own),
                     f"memorization {name}")
        run = self.work / f"{name}.h5"
        self.execute(self.command("estimate", "--model", model, "--out", run, "--n-samples", 8,
                                  "--n-times", self.n_times, "--overwrite"), f"estimate {name}")
        metrics = json.loads((out / "metrics.json").read_text())
        tau, kept = kept_directions(run)
        return {"memorized_fraction": metrics["memorized_fraction"], "median_ratio": metrics["median_ratio"],
                "tau": tau.tolist(), "kept": kept.tolist(), "figure": out / "nearest.png"}

    # --- (b): the crossover on the isotropic mixture ------------------------------------------
    def crossover(self) -> dict:
        (self.work / "mixture.toml").write_text(MIXTURE.format(d=MIXTURE_D, k=MIXTURE_K))
        out = json.loads(self.execute(self.command("crossover", "--json"), "crossover"))
        predicted = {row["C"]: row["critical_fraction"] for row in out["crossover"]}
        draws = 2 if self.smoke else 32
        results = {}
        for n in MIXTURE_NS[:2] if self.smoke else MIXTURE_NS:
            results[n] = excess_losses(self.work, n, draws, seed=n)
            results[n]["predicted"] = predicted
        return results


def last_loss(ck: Path) -> float:
    """The mean training loss of a checkpoint's last 20 logged intervals (1,000 steps)."""
    return float(torch.load(ck, weights_only=True)["losses"][-20:].mean())


def kept_directions(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tau (T,), the directions the denoiser keeps (T,)): the count of values of the median
    normalized spectrum over anchors above -1 + Delta, as the snapshots summary counts them."""
    traj = spectra.load(run)
    mu, _ = measured_spectrum(traj)
    return np.asarray(traj["tau"]), snapshots.kept_directions(mu, DELTA)


def excess_losses(work: Path, n: int, draws: int, seed: int) -> dict:
    """The weighted excess training losses (theory.md 3.7) on N training points of the mixture:
    E_t over the paper's grid (uniform weighting) of E_i E_eps ||D(alpha x_i + sigma eps) - x_i||^2
    for D the exact generalizing denoiser (the mixture's) and the partially memorizing ones (the
    empirical score of the first M points), each minus that of the full memorizing denoiser (all N
    points); the same `draws` noises per point and time for every denoiser. The measured crossover
    is where the memorizing excess, linear interpolation in M, falls to the generalizing one."""
    gmm = load_model(str(work / "mixture.toml"))
    x = gmm.sample(n, np.random.default_rng(seed))
    np.save(work / f"mixture{n}.npy", x)
    t = paper_grid()
    alpha, sigma = vp_sqrt(t)
    ms = np.unique(np.linspace(0, n, 21).round().astype(int))

    def loss(model) -> np.ndarray:
        per_time = []
        with torch.no_grad():
            for ti, (a, s) in enumerate(zip(alpha, sigma, strict=True)):
                eps = np.random.default_rng([seed, 2, ti]).standard_normal((draws, *x.shape))
                total = 0.0
                for e in eps:  # one draw of every point at a time: (N, M, d) in memory
                    d = model.target(torch.as_tensor(a * x + s * e), float(t[ti]), "denoiser").numpy()
                    total += np.sum((d - x) ** 2)
                per_time.append(total / (draws * n))
        return np.array(per_time)

    def empirical(m: int):
        (work / f"mix{n}-{m}.toml").write_text(EMPIRICAL.format(
            points=f"mixture{n}.npy", memorized=f"memorized = {m}", schedule="vp-sqrt"))
        return load_model(str(work / f"mix{n}-{m}.toml"))

    full = loss(empirical(n))
    generalizing = np.mean(loss(gmm) - full)
    memorizing = np.array([np.mean(loss(empirical(m)) - full) if m > 0 else np.nan for m in ms])
    fractions = ms / n
    known = ~np.isnan(memorizing)
    # fitted C: the memorizing excess against C (1 - M/N) d s*^2 (least squares through 0, M < N)
    inner = known & (ms < n)
    slope = np.sum(memorizing[inner] * (1 - fractions[inner])) / np.sum((1 - fractions[inner]) ** 2)
    fitted_c = slope / MIXTURE_D
    below = np.nonzero(known & (memorizing <= generalizing))[0]
    measured = None
    if below.size and below[0] > 0 and known[below[0] - 1]:
        i = below[0]
        f0, f1, e0, e1 = fractions[i - 1], fractions[i], memorizing[i - 1], memorizing[i]
        measured = float(f0 + (e0 - generalizing) * (f1 - f0) / (e0 - e1))
    return {"fractions": fractions.tolist(), "memorizing": memorizing.tolist(),
            "generalizing": float(generalizing), "fitted_C": float(fitted_c), "measured": measured,
            "predicted_fitted": float(critical_fraction(alpha, sigma, 1.0, fitted_c))}


# --- the page -------------------------------------------------------------------------------------
def figures(study: Study, digits: dict, mixture: dict) -> None:
    out = study.figures
    rows = digits["rows"]
    ns = list(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    left.semilogx(ns, [rows[n]["network"]["memorized_fraction"] for n in ns], "o-", label="U-Net")
    left.semilogx(ns, [rows[n]["empirical"]["memorized_fraction"] for n in ns], "s--",
                  label="exact empirical score")
    left.set_xlabel("training images N")
    left.set_ylabel("memorized fraction (ratio < 1/3)")
    left.set_ylim(-0.05, 1.05)
    left.legend(loc="best")
    for n in ns:
        right.semilogx(rows[n]["network"]["tau"], rows[n]["network"]["kept"], "o-", ms=3,
                       label=f"U-Net, N = {n}")
    right.semilogx(rows[ns[0]]["empirical"]["tau"], rows[ns[-1]]["empirical"]["kept"], "k--",
                   label=f"exact empirical, N = {ns[-1]}")
    right.set_xlabel(r"$\tau = \sigma^2/\alpha^2$")
    right.set_ylabel(r"directions kept: median $\mu > -1 + \Delta$ (8 digits)")
    right.legend(loc="best", fontsize=8)
    fig.suptitle("digits: memorization and the spectral signature against the training-set size")
    fig.savefig(out / "digits.png", dpi=120)
    plt.close(fig)
    for n in (ns[0], ns[-1]):
        shutil.copy(rows[n]["network"]["figure"], out / f"digits{n}-nearest.png")

    fig, axes = plt.subplots(1, len(mixture), figsize=(5 * len(mixture), 4.2), layout="constrained")
    for ax, (n, res) in zip(np.atleast_1d(axes), mixture.items(), strict=True):
        ax.plot(res["fractions"], res["memorizing"], "o-", label="memorizing M of N (measured)")
        ax.axhline(res["generalizing"], color="tab:green", label="generalizing (measured)")
        for c, f in res["predicted"].items():
            ax.axvline(f, color="gray", linestyle=":", lw=1)
            ax.text(f, ax.get_ylim()[1] * 0.9, f"C={c:g}", fontsize=7, rotation=90)
        if res["measured"] is not None:
            ax.axvline(res["measured"], color="tab:red", label=f"measured crossover {res['measured']:.3f}")
        ax.set_title(f"N = {n}")
        ax.set_xlabel("M / N")
        ax.set_ylabel("weighted excess training loss")
        ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"isotropic mixture (d = {MIXTURE_D}, K = {MIXTURE_K}): "
                 "where memorizing overtakes generalizing")
    fig.savefig(out / "crossover.png", dpi=120)
    plt.close(fig)
    shutil.copy(study.work / "snapshots" / "summary.png", out / "snapshots.png")


def invocation(study: Study) -> str:
    """The command line that made the page."""
    scale = f" --scale {study.scale}" if study.scale != 1 else ""
    return f"python experiments/reproduce_memorization.py{scale}" + (" --reuse" if study.reuse else "")


def page(study: Study, digits: dict, mixture: dict) -> str:
    rows, snaps = digits["rows"], digits["snapshots"]["snapshots"]
    ns = list(rows)
    first_tau = rows[ns[0]]["network"]["tau"][0]
    mid = int(np.argmin(np.abs(np.log(np.array(rows[ns[0]]["network"]["tau"]) / 1e-2))))
    mid_tau = rows[ns[0]]["network"]["tau"][mid]
    lines = [
        "# Memorization: reproduced with spectra's own commands",
        "",
        f"Generated by `{invocation(study)}` in {(time.perf_counter() - study.started) / 60:.0f} minutes on "
        f"this machine ({os.cpu_count()} CPUs, torch {torch.__version__})"
        + (", keeping the networks an earlier run trained with the same commands" if study.reuse else "")
        + ". Every number below is measured by the commands listed at the end; the theory is "
        "docs/theory.md 3.5 and 3.7.",
        "",
        "## (a) Digits: memorization against the training-set size",
        "",
        f"A U-Net (`spectra train`, {study.steps()} steps, batch 128) on the first N of scikit-learn's "
        f"8 x 8 digits; {study.generated()} samples each (`spectra memorization`, Heun, 32 steps); "
        "the denoiser's directions kept (values of the median normalized spectrum of 8 training digits "
        "above -1 + 0.1; docs/theory.md 3.5) from `spectra estimate`. The exact empirical score of the "
        "same images is the memorizing reference (theory: memorized fraction 1, no direction kept at "
        "small tau).",
        "",
        f"| N | memorized fraction (U-Net) | (exact empirical) | directions kept at tau = {first_tau:.2g} "
        f"(U-Net / empirical) | at tau = {mid_tau:.2g} | final training loss |",
        "|---|---|---|---|---|---|",
    ]
    for n, row in rows.items():
        net, emp = row["network"], row["empirical"]
        lines.append(f"| {n} | {net['memorized_fraction']:.3f} | {emp['memorized_fraction']:.3f} | "
                     f"{net['kept'][0]:g} / {emp['kept'][0]:g} | "
                     f"{net['kept'][mid]:g} / {emp['kept'][mid]:g} | "
                     f"{row['loss']:.4g} |")
    nets = [rows[n]["network"] for n in ns]
    frac = [net["memorized_fraction"] for net in nets]
    kept_mid, kept_first = [net["kept"][mid] for net in nets], [net["kept"][0] for net in nets]
    empirical_first = max(rows[n]["empirical"]["kept"][0] for n in ns)
    lines += ["", f"Measured: the memorized fraction goes from {frac[0]:.2f} at N = {ns[0]} to "
              f"{frac[-1]:.2f} "
              f"at N = {ns[-1]}, and the directions kept at tau = {mid_tau:.2g} from {kept_mid[0]:g} to "
              f"{kept_mid[-1]:g} of 64. At the smallest tau ({first_tau:.2g}) the networks keep between "
              f"{min(kept_first):g} and {max(kept_first):g} directions whatever N, where the exact "
              f"empirical score keeps {empirical_first:g}. At tau = {mid_tau:.2g} the count "
              + ("rises with N." if np.all(np.diff(kept_mid) >= 0) else "is not monotone in N."),
              "", "![digits](memorization/digits.png)", "",
              f"Samples of the N = {ns[0]} network beside their nearest training images:", "",
              f"![nearest](memorization/digits{ns[0]}-nearest.png)", "",
              f"and of the N = {ns[-1]} network:", "",
              f"![nearest](memorization/digits{ns[-1]}-nearest.png)", "",
              "## (b) The isotropic mixture: the crossover M*/N, measured against predicted", "",
              f"N points of the mixture of [B] (K = {MIXTURE_K} clusters of variance s_*^2 = 1 in d = "
              f"{MIXTURE_D}, vp-sqrt schedule), the paper's 26-time grid, uniform weighting. Measured: the "
              "weighted excess training losses (against the denoiser that memorizes all N) of the exact "
              "generalizing denoiser and of the partially memorizing ones (the empirical score of M of the "
              "N points, `memorized = M`), on the training points, and the M/N where they cross. "
              "Predicted: `spectra crossover` (M*/N = 1 - E_t[1/(psi_t s_*^2 + 1)] / C) at C = 1, 1.5, 2, "
              "and at the C fitted to the measured memorizing losses (C (1 - M/N) d s_*^2).", "",
              "| N | measured M*/N | fitted C | predicted M*/N at fitted C | predicted, C = 1 / 1.5 / 2 |",
              "|---|---|---|---|---|"]
    for n, res in mixture.items():
        pred = " / ".join(f"{v:.3f}" for v in res["predicted"].values())
        measured = "none in [0, 1]" if res["measured"] is None else f"{res['measured']:.3f}"
        lines.append(f"| {n} | {measured} | {res['fitted_C']:.3f} | {res['predicted_fitted']:.3f} | {pred} |")
    lines += ["", "![crossover](memorization/crossover.png)", "",
              "## (c) Across training: the signature appears as the network memorizes", "",
              f"The N = {SNAPSHOT_N} network's snapshots (`--snapshot-every`), each estimated and sampled "
              f"(`spectra estimate --model SNAPSHOTS`, {study.generated()} samples per snapshot):", "",
              f"| step | directions kept at tau = {snaps[0]['tau']:.2g} | "
              f"at tau = {snaps[0]['taus'][mid]:.2g} | memorized fraction |",
              "|---|---|---|---|"]
    for row in snaps:
        lines.append(f"| {row['step']} | {row['kept_directions']} | {row['kept_by_tau'][mid]} | "
                     f"{row['memorized_fraction']:.3f} |")
    lines += ["", "![snapshots](memorization/snapshots.png)", "", "## Commands", "", "```"]
    lines += study.commands + ["```", "", "Seconds per command group: " + ", ".join(
        f"{k} {v:.0f}" for k, v in study.seconds.items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "experiments" / "work-memorization")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--scale", type=float, default=1.0, help="Fraction of the training steps.")
    parser.add_argument("--n-times", type=int, default=12, help="Times per run.")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep checkpoints in --work already trained to their step count.")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    study = Study(args.work.resolve(), args.docs.resolve(), args.scale, args.n_times, args.reuse)
    study.figures.mkdir(parents=True, exist_ok=True)
    digits = study.digits()
    mixture = study.crossover()
    figures(study, digits, mixture)
    (study.docs / "memorization.md").write_text(page(study, digits, mixture))
    print(f"wrote {study.docs / 'memorization.md'}")


if __name__ == "__main__":
    main()
