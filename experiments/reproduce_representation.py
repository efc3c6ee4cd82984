"""Reproduce the representation study of [L] (Li et al., NeurIPS 2025) with spectra's own commands,
from scratch, and write docs/representation.md.

    python experiments/reproduce_representation.py        # about 15 minutes on 2 CPU cores

Every model is trained by `spectra train` and measured by `spectra represent`, `spectra estimate
--save-vectors`, `spectra compare-theory` and `spectra angles`, each run as a subprocess exactly as
a user would type it (the commands are listed in the page). The parts:

(a) MoLRG (K = 3 classes of dimension d = 5 in n = 50, delta = 0.2, VE): the exact optimal
    denoiser's SNR over sigma (Definition 1 with the true class subspaces) against an independent
    computation (theory.md 3.8) and Theorem 1; [L]'s tractable network (`--network mixture`, a
    learned low-rank mixture's posterior mean) and the residual MLP trained on fresh samples, and
    the MLP trained on few samples until it memorizes, with their SNR curves;
(b) the Jacobians of the same three denoisers: the class gap at index d (measured, and predicted by
    compare-theory's mixture theory) and the largest principal angle between the top-d right
    singular subspace and the anchor's own class subspace, over tau;
(c) digits (real data): the linear probe's test accuracy over sigma of a U-Net's bottleneck
    features (`--feature mid`).

`--scale 0.01` shrinks every training to 1% of its steps and every sample count, and any scale
below 0.1 takes 3 noise levels for the digits (a smoke test of the pipeline; its numbers mean
nothing).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from commands import Commands, trained  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the noise levels of theory.md 3.8's independent check, and its SNR values there
CHECK_SIGMAS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 4.0)
CHECK_SNR = (12.4, 13.1, 15.3, 23.1, 30.5, 18.9, 5.3, 1.9, 0.78, 0.54)
#: the levels measured: the check's, but 0.011 for 0.01, the ve schedule's open end (sigma_min)
SIGMAS = (0.011, *CHECK_SIGMAS[1:])
#: training steps of the mixture network, the MLPs and the digits U-Net; the memorizing MLP's points
MIXTURE_STEPS, STEPS, DIGIT_STEPS, FEW = 8000, 20000, 4000, 12
D_CLASS = 5

MOLRG = """kind = "gmm"
preset = "molrg"
ambient_dim = 50
n_classes = 3
subspace_dim = 5
delta = 0.2
seed = 0

[schedule]
name = "ve"
"""
MODELS = {"exact": "molrg.toml", "mixture": "mixture.pt", "mlp": "mlp.pt", "memorizing": "memorizing.pt"}
COLORS = {"exact": "black", "mixture": "tab:green", "mlp": "tab:blue", "memorizing": "tab:red"}


class Study(Commands):
    def __init__(self, work: Path, docs: Path, scale: float, reuse: bool = False) -> None:
        super().__init__(work)
        self.docs, self.scale, self.reuse = docs, scale, reuse
        self.figures = docs / "representation"

    def count(self, n: int, least: int) -> int:
        return max(least, int(n * self.scale))

    # --- training ------------------------------------------------------------------------------
    def train(self) -> None:
        (self.work / "molrg.toml").write_text(MOLRG)
        self.execute(self.command("dataset", "digits", "--out", "digits.npz", "--overwrite"), "dataset")
        steps = self.count(STEPS, 20)
        jobs = [
            (self.command("train", "--data", "molrg.toml", "--n-train", FEW, "--out", "memorizing.pt",
                          "--steps", steps, "--overwrite"), "train memorizing"),
            (self.command("train", "--data", "molrg.toml", "--network", "mixture", "--depth", 3, "--width",
                          D_CLASS, "--lr", 0.01, "--out", "mixture.pt", "--steps",
                          self.count(MIXTURE_STEPS, 20), "--overwrite"), "train mixture"),
            (self.command("train", "--data", "molrg.toml", "--out", "mlp.pt", "--steps", steps,
                          "--overwrite"), "train mlp"),
            (self.command("train", "--data", "digits.npz:x", "--out", "digits.pt", "--steps",
                          self.count(DIGIT_STEPS, 20), "--batch-size", 128, "--overwrite"), "train digits"),
        ]
        if self.reuse:  # checkpoints already at their step count are listed, not retrained
            jobs = [(args, label) for args, label in jobs if not trained(
                self.work / args[args.index("--out") + 1], int(args[args.index("--steps") + 1]))]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda job: self.execute(*job, threads=1), jobs))

    # --- (a) representation curves -------------------------------------------------------------
    def represent(self) -> dict:
        sigmas = ",".join(str(s) for s in SIGMAS)
        out = {}
        for name, model in MODELS.items():
            n = self.count(30000 if name == "exact" else 6000, 300)
            self.execute(self.command("represent", "--model", model, "--out", f"represent-{name}",
                                      "--sigmas", sigmas, "--n-samples", n), f"represent {name}")
            out[name] = json.loads((self.work / f"represent-{name}" / "metrics.json").read_text())
        self.execute(self.command("memorization", "--model", "memorizing.pt", "--n", self.count(200, 20),
                                  "--out", "memorization"), "memorization")
        out["linear"] = self.linear_snr(self.count(30000, 300))
        out["memorized_fraction"] = json.loads(
            (self.work / "memorization" / "metrics.json").read_text())["memorized_fraction"]
        return out

    def linear_snr(self, n: int, seed: int = 0) -> list[float]:
        """Definition 1 (true class subspaces) of the Gaussian-equivalent linear denoiser of the
        MoLRG data, xhat = C (C + sigma^2 I)^{-1} y with C the mixture's covariance (theory.md 3.1,
        VE), on n labelled samples at each of SIGMAS: what a denoiser that learned only the data's
        covariance gives."""
        from spectra.models import load_model
        from spectra.theory.representation import class_snr

        model = load_model(str(self.work / "molrg.toml"))
        rng = np.random.default_rng(seed)
        x0, labels = model.sample_labeled(n, rng)
        noise = rng.standard_normal(x0.shape)
        cov = model.covariance()
        d = model.bases.shape[2] // len(model.weights)
        bases = {k: model.bases[k][:, k * d:(k + 1) * d] for k in range(len(model.weights))}
        out = []
        for sigma in SIGMAS:
            y = x0 + sigma * noise
            xhat = np.linalg.solve(cov + sigma**2 * np.eye(len(cov)), cov @ y.T).T
            out.append(class_snr(xhat, labels, bases))
        return out

    # --- (b) Jacobians: class gap and principal angles ------------------------------------------
    def jacobians(self) -> dict:
        out = {}
        for name, model in MODELS.items():
            run = f"{name}.h5"
            self.execute(self.command("estimate", "--model", model, "--out", run, "--target", "denoiser",
                                      "--method", "jvp", "--n-samples", self.count(16, 4), "--n-times",
                                      self.count(24, 6), "--save-vectors", D_CLASS, "--overwrite"),
                         f"estimate {name}")
            self.execute(self.command("compare-theory", run, "--out", f"theory-{name}"), f"compare {name}")
            self.execute(self.command("angles", run, "--out", f"angles-{name}"), f"angles {name}")
            out[name] = {
                "theory": json.loads((self.work / f"theory-{name}" / "metrics.json").read_text()),
                "angles": json.loads((self.work / f"angles-{name}" / "metrics.json").read_text())}
        return out

    # --- (c) digits ----------------------------------------------------------------------------
    def digits(self) -> dict:
        levels = 12 if self.scale >= 0.1 else 3
        self.execute(self.command("represent", "--model", "digits.pt", "--data", "digits.npz", "--feature",
                                  "mid", "--out", "represent-digits", "--n-sigmas", levels,
                                  "--sigma-min", 0.02, "--sigma-max", 20), "represent digits")
        return json.loads((self.work / "represent-digits" / "metrics.json").read_text())


def column(metrics: dict, name: str) -> np.ndarray:
    return np.array([np.nan if row.get(name) is None else row[name] for row in metrics["levels"]])


def figures(study: Study, rep: dict, jac: dict, digits: dict) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sigma = column(rep["exact"], "sigma")
    left.plot(CHECK_SIGMAS, CHECK_SNR, "s", color="0.6", markersize=8, label="independent (theory.md 3.8)")
    left.plot(sigma, column(rep["exact"], "snr_theorem1"), ":", color="black", label="Theorem 1")
    for name in MODELS:
        left.plot(sigma, column(rep[name], "snr_exact"), "o-", color=COLORS[name], label=f"{name} denoiser")
        right.plot(sigma, column(rep[name], "snr"), "o-", color=COLORS[name], label=name)
    left.set(xscale="log", yscale="log", xlabel=r"$\sigma$", ylabel="SNR (true class subspaces)",
             title="Definition 1 on the denoiser output")
    right.set(xscale="log", yscale="log", xlabel=r"$\sigma$", ylabel="SNR (estimated top-5 subspaces)",
              title="the real-network recipe (normalized, centred)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.savefig(study.figures / "snr.png", dpi=120)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for name in MODELS:
        times = jac[name]["theory"]["times"]
        tau = np.array([row["tau"] for row in times])
        order = np.argsort(tau)
        measured = np.array([row["mixture"]["class_gap_measured"] for row in times])
        left.plot(tau[order], measured[order], "o-", color=COLORS[name], label=f"{name}, measured")
        if name == "exact":
            predicted = np.array([row["mixture"]["class_gap_confident"] for row in times])
            left.plot(tau[order], predicted[order], "--", color="0.5",
                      label=r"confident regime $\zeta - \xi$")
        angles = jac[name]["angles"]["times"]
        a_tau = np.array([row["tau"] for row in angles])
        a = np.array([np.nan if row["largest_angle_own"] is None else row["largest_angle_own"]
                      for row in angles])
        o = np.argsort(a_tau)
        right.plot(a_tau[o], np.degrees(a[o]), "o-", color=COLORS[name], label=name)
    left.set(xscale="log", xlabel=r"$\tau = \sigma^2$", ylabel="gap at index d = 5 (normalized)",
             title="the class gap of the denoiser's Jacobian")
    right.set(xscale="log", xlabel=r"$\tau = \sigma^2$", ylabel="largest principal angle (degrees)",
              title="top-5 right singular subspace vs own class subspace")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.savefig(study.figures / "jacobian.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(column(digits, "sigma"), column(digits, "probe_accuracy"), "o-", label="U-Net `mid` features")
    ax.axhline(1 / len(digits["classes"]), color="0.5", linestyle=":", label="chance")
    ax.set(xscale="log", xlabel=r"$\sigma$", ylabel="linear probe test accuracy",
           title="digits: linear probe over noise levels")
    ax.legend()
    fig.savefig(study.figures / "digits.png", dpi=120)
    plt.close(fig)


def shape(curve: dict | None) -> str:
    if curve is None:
        return "not finite"
    if curve["shape"] == "unimodal":
        return f"unimodal (max {curve['max']:.3g} at sigma = {curve['argmax_sigma']:.3g})"
    return f"monotone, {curve['direction']} (max {curve['max']:.3g} at sigma = {curve['argmax_sigma']:.3g})"


def gap_agreement(theory: dict) -> tuple[float, float, float]:
    """(largest |measured - predicted| class gap over the times, the share of anchors whose
    posterior is confident (largest weight >= 1 - 1e-9) at the smallest tau, and that tau)."""
    rows = theory["times"]
    worst = max(abs(r["mixture"]["class_gap_measured"] - r["mixture"]["class_gap_predicted"]) for r in rows)
    first = min(rows, key=lambda r: r["tau"])
    return worst, first["mixture"]["confident_fraction"], first["tau"]


def page(study: Study, rep: dict, jac: dict, digits: dict) -> str:
    exact = rep["exact"]
    lines = ["# The representation study of Li et al., reproduced", "",
             "Generated by `python experiments/reproduce_representation.py` "
             f"(scale {study.scale:g}); every number below is measured by the commands listed at the "
             "end. [L] = Li, Zhang, Li, Chen, Zhu, Wang, Qu, \"Understanding Representation Dynamics of "
             "Diffusion Models via Low-Dimensional Modeling\" (NeurIPS 2025). The math: "
             "[theory.md](theory.md) 3.6 and 3.8.", "",
             "## (a) MoLRG: SNR over the noise level", "",
             "K = 3 classes, subspaces of dimension d = 5 in n = 50, delta = 0.2, VE. `snr_exact` is "
             "Definition 1 on the denoiser's output with the true class subspaces U_k; `snr` is the "
             "real-network recipe (features normalized, centred, the top-5 right singular vectors of "
             "each class on the training split). The smallest level is 0.011 where the check has 0.01: "
             "sigma_min = 0.01 is the open end of the ve schedule's range (its SNR lies on the low-noise "
             "plateau, 1/((K-1) delta^2) = 12.5).", "",
             "| sigma | exact denoiser | independent (theory.md 3.8) | Theorem 1 | linear (Gaussian) "
             "denoiser | mixture network | MLP | memorizing MLP |", "|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(SIGMAS):
        nets = " | ".join(f"{column(rep[name], 'snr_exact')[i]:.3g}"
                          for name in ("mixture", "mlp", "memorizing"))
        lines.append(f"| {s:g} | {column(exact, 'snr_exact')[i]:.3g} | {CHECK_SNR[i]:g} | "
                     f"{column(exact, 'snr_theorem1')[i]:.3g} | {rep['linear'][i]:.3g} | {nets} |")
    lines += ["", "Curve shapes (spectra represent's detection):", ""]
    for name in MODELS:
        curves = rep[name]["curves"]
        lines.append(f"* **{name}**: SNR with true subspaces {shape(curves.get('snr_exact'))}; recipe SNR "
                     f"{shape(curves.get('snr'))}.")
    lines += ["", *findings(study, rep, jac)]
    lines += ["", f"The mixture network ({study.count(MIXTURE_STEPS, 20)} steps) and the MLP "
              f"({study.count(STEPS, 20)} steps) were trained on fresh samples; the memorizing MLP on {FEW} "
              f"points for {study.count(STEPS, 20)} steps, and `spectra memorization` finds "
              f"{rep['memorized_fraction']:.2f} of its samples memorized (nearest / second-nearest "
              "training distance below 1/3).", "",
              "![snr](representation/snr.png)", "",
              "## (b) The Jacobian: class gap and principal angles", "",
              f"`spectra estimate --target denoiser --save-vectors {D_CLASS}` at clean points of each "
              "class, then `spectra compare-theory` (which picks the mixture theory for a gmm spec and "
              "for a network trained on one) and `spectra angles` (the class subspaces as references).", ""]
    worst, share, tau0 = gap_agreement(jac["exact"]["theory"])
    lines.append(f"For the exact denoiser the measured class gap equals the exact prediction at the run's "
                 f"points to {worst:.1g} at every time. At tau = {tau0:.2g} the posterior is confident "
                 f"(largest weight >= 1 - 1e-9) at {share:.0%} of the anchors: MoLRG's components share "
                 "one support (each covariance spans every class, the others at delta), so (derived) at "
                 "a point with little energy in its own class the posterior stays soft as tau -> 0, and the "
                 "confident-regime levels zeta, xi hold only where it is confident (tests/"
                 "test_mixture_theory.py checks them there to 1e-6).")
    angle_rows = jac["exact"]["angles"]["times"]
    mid = min(range(len(angle_rows)), key=lambda i: abs(np.log(angle_rows[i]["tau"] / 0.04)))
    first = min(range(len(angle_rows)), key=lambda i: angle_rows[i]["tau"])
    lines += ["", "| model | predicted class gap opens / closes (tau) | measured opens / closes | "
              f"largest angle to the own class at tau = {angle_rows[mid]['tau']:.2g} (rad) | "
              f"at tau = {angle_rows[first]['tau']:.2g} |", "|---|---|---|---|---|"]
    for name in MODELS:
        ph = jac[name]["theory"]["phases"]
        pred, meas = ph["predicted"]["class_gap"], ph["measured"]["class_gap"]
        rows = jac[name]["angles"]["times"]
        lines.append(f"| {name} | {_window(pred)} | {_window(meas)} | {rows[mid]['largest_angle_own']:.2g} | "
                     f"{rows[first]['largest_angle_own']:.2g} |")
    lines += ["", "![jacobian](representation/jacobian.png)", "",
              "## (c) Digits: the linear probe over noise levels", "",
              f"A U-Net trained by `spectra train` on the 1,797 digits ({study.count(DIGIT_STEPS, 20)} "
              "steps); "
              "features: its bottleneck block `mid`; probe: logistic regression on 70% of each class, "
              f"accuracy on the rest. The curve is {shape(digits['curves'].get('probe_accuracy'))}: on these "
              "8 x 8 digits the features of the least noisy inputs separate the classes best, and no "
              "interior peak shows.", "",
              "![digits](representation/digits.png)", "", "## Commands", "", "```"]
    lines += study.commands + ["```", "", "Seconds per command group: " + ", ".join(
        f"{k} {v:.0f}" for k, v in study.seconds.items()), ""]
    return "\n".join(lines)


def findings(study: Study, rep: dict, jac: dict) -> list[str]:
    """The measured statements of part (a), computed from the numbers above."""
    from spectra.models import load_model

    exact, check = column(rep["exact"], "snr_exact"), np.array(CHECK_SNR)
    worst = float(np.max(np.abs(exact[1:] - check[1:]) / check[1:]))
    linear, mlp = np.array(rep["linear"]), column(rep["mlp"], "snr_exact")
    middle = (np.array(SIGMAS) >= 0.05) & (np.array(SIGMAS) <= 0.8)
    mlp_gap = float(np.max(np.abs(mlp[middle] - linear[middle]) / linear[middle]))
    floor = float(load_model(str(study.work / "mixture.pt")).module.log_floor.detach().exp())
    return [
        f"* The exact denoiser's SNR is within {100 * worst:.1f}% of the independent values at every "
        "level from 0.05 up.",
        f"* The mixture network's curve is {shape(rep['mixture']['curves'].get('snr_exact'))}. It is "
        "higher than the optimum in the middle: its components have rank 5 (one class each), so the "
        "other classes' delta-directions fall to its isotropic floor, learned at s^2 = "
        f"{floor:.2g} (delta^2 = 0.04), and are shrunk more than the optimal denoiser shrinks them.",
        f"* The MLP trained on fresh samples is within {100 * mlp_gap:.0f}% of the Gaussian-equivalent "
        "linear denoiser at every level from 0.05 to 0.8 (below it at larger sigma), and monotone: "
        "where the classes matter it denoises as if it had learned the data's covariance and not "
        "its classes (part (b): no class gap, and its top-5 subspace is far from every class "
        "subspace).",
        f"* The memorizing MLP's curve is {shape(rep['memorizing']['curves'].get('snr_exact'))}.",
    ]


def _window(gap: dict | None) -> str:
    return "never visible" if gap is None else f"{gap['tau_open']:.3g} / {gap['tau_close']:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "experiments" / "work-representation")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--scale", type=float, default=1.0, help="Fraction of the steps and samples.")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep checkpoints in --work already trained to their step count.")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    study = Study(args.work.resolve(), args.docs.resolve(), args.scale, args.reuse)
    study.figures.mkdir(parents=True, exist_ok=True)
    study.train()
    rep = study.represent()
    jac = study.jacobians()
    digits = study.digits()
    figures(study, rep, jac, digits)
    (study.docs / "representation.md").write_text(page(study, rep, jac, digits))
    print(f"wrote {study.docs / 'representation.md'}")


if __name__ == "__main__":
    main()
