"""Figures of measured spectra, optionally with the theory overlaid (matplotlib; PNG, PDF or SVG by
the path's suffix, at a given dpi).

All figures use the normalized scale of spectra.analysis: |mu|, the magnitudes of the eigenvalues
of sigma^2 J_score (the normalized singular values; theory.md 2), against the VE-equivalent
variance tau on a log axis. Functions take arrays and write one figure each. Axes always hold
every finite value they are given (nothing is clipped), colour that encodes an index has a
colorbar, and legends sit inside the figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from spectra.analysis import gap_widths, median_spectrum
from spectra.errors import SpectraError

FIGSIZE, DPI = (12.0, 6.0), 150
#: the figure formats spectra writes
FORMATS = ("png", "pdf", "svg")
TAU_LABEL = r"$\tau = \sigma^2 / \alpha^2$ (VE-equivalent noise variance)"
MU_LABEL = r"normalized singular value $|\mu|$ of $\sigma^2 J_{\mathrm{score}}$"
PREDICTED = {"trivial": "tab:red", "manifold": "tab:blue", "intermediate": "tab:green"}


#: the PNG text chunk matplotlib writes (Software: Matplotlib version...), which marks a figure
#: spectra may replace
_PNG_SIGNATURE, _SOFTWARE = b"\x89PNG\r\n\x1a\n", b"Software\x00Matplotlib"


def save(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write `fig` to `path` (the format its suffix names) at `dpi`; returns the path."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def check_own_figure(path: Path) -> None:
    """Raise SpectraError unless `path` is a figure written by matplotlib (as spectra's are) in
    the format its suffix names: a figure command never replaces someone else's file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
            fh.seek(max(0, path.stat().st_size - 4096))
            tail = fh.read(4096)
    except OSError as exc:
        raise SpectraError(exc.strerror or str(exc)) from None
    # matplotlib writes a PDF's Info dictionary last, an SVG's metadata first
    ours = {".png": head.startswith(_PNG_SIGNATURE) and _SOFTWARE in head,
            ".pdf": head.startswith(b"%PDF") and b"/Producer (Matplotlib pdf backend" in tail,
            ".svg": b"<svg" in head and b"<dc:title>Matplotlib v" in head}
    if not ours.get(path.suffix, False):
        raise SpectraError("not a figure made by spectra")


def _ylim_holding(ax, values: list[np.ndarray], floor: float = 1.05) -> None:
    """A y axis from just below 0 to the larger of `floor` and 5% above the largest finite value,
    so that no value is clipped."""
    finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in values if v is not None]
    top = max([floor] + [float(v.max()) * 1.05 for v in finite if v.size])
    ax.set_ylim(-0.02 * top, top)


def _finish_tau_axes(fig: Figure, ax, path: Path, ylabel: str, title: str, values: list[np.ndarray],
                     dpi: int) -> Path:
    """Log tau axis, a y axis holding every value, the legend inside the axes; save."""
    ax.set_xscale("log")
    ax.set_xlabel(TAU_LABEL)
    ax.set_ylabel(ylabel)
    _ylim_holding(ax, values)
    ax.set_title(title.strip())
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path, dpi)


def figure_times(tau: np.ndarray, count: int = 4) -> np.ndarray:
    """Indices of up to `count` grid times spread evenly in log tau."""
    logt = np.log(tau)
    want = np.linspace(logt.min(), logt.max(), min(count, len(tau)))
    return np.unique([int(np.argmin(np.abs(logt - w))) for w in want])


def spectra_at_times(
    path: Path, tau: np.ndarray, mu: np.ndarray, predicted: np.ndarray | None = None,
    label: str = "", dpi: int = DPI,
) -> Path:
    """Sorted normalized singular values |mu| against their index at four times, median over
    anchors with the anchors' range shaded; `predicted` (T, D) drawn as a line.
    mu: (N, T, K) descending normalized spectra."""
    idx = figure_times(tau)
    fig = Figure(figsize=FIGSIZE)
    axes = fig.subplots(1, len(idx), sharey=True, squeeze=False)[0]
    mags = np.abs(mu)
    med = median_spectrum(mags)
    lo = np.where(np.isnan(mags), np.inf, mags).min(0)
    hi = np.where(np.isnan(mags), -np.inf, mags).max(0)
    lo, hi = np.where(np.isfinite(lo), lo, np.nan), np.where(np.isfinite(hi), hi, np.nan)
    for ax, ti in zip(axes, idx, strict=True):
        k = np.arange(1, mu.shape[-1] + 1)
        ax.fill_between(k, lo[ti], hi[ti], color="tab:orange", alpha=0.3, label="measured range")
        ax.plot(k, med[ti], ".", color="tab:orange", ms=4, label="measured (median)")
        if predicted is not None:
            pk = np.arange(1, predicted.shape[-1] + 1)
            ax.plot(pk, np.abs(predicted[ti]), "-", color="black", lw=1, label="theory")
        ax.set_yscale("log")
        ax.set_title(rf"$\tau$ = {tau[ti]:.3g}")
        ax.set_xlabel(r"index $k$ (sorted by $\mu$, descending)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(MU_LABEL)
    axes[0].legend(loc="lower left", fontsize=8, framealpha=0.85)
    fig.suptitle(f"Spectrum at {len(idx)} times {label}".strip())
    fig.tight_layout()
    return save(fig, path, dpi)


def _phase_lines(ax, phases: dict | None, style: str, tag: str) -> None:
    if not phases:
        return
    marks = [("trivial_end_tau", "trivial", "trivial phase ends"),
             ("manifold_gap_open_tau", "manifold", "manifold gap opens")]
    for key, kind, text in marks:
        if phases.get(key) is not None:
            ax.axvline(phases[key], color=PREDICTED[kind], ls=style, lw=1.5, label=f"{text} ({tag})")
    for n, gap in enumerate(phases.get("intermediate_gaps", [])):
        name = f"intermediate gap visible ({tag})" if n == 0 else None
        if style == "-":
            ax.axvspan(gap["tau_close"], gap["tau_open"], color=PREDICTED["intermediate"], alpha=0.1,
                       lw=0, label=name)
        else:
            ax.axvspan(gap["tau_close"], gap["tau_open"], fill=False, hatch="//", lw=0.5,
                       ec=PREDICTED["intermediate"], label=name)


def trajectories(
    path: Path, tau: np.ndarray, median_mu: np.ndarray, predicted: np.ndarray | None = None,
    predicted_phases: dict | None = None, measured_phases: dict | None = None, label: str = "",
    dpi: int = DPI,
) -> Path:
    """Every normalized singular value |mu| (median over anchors, (T, K)) against tau, coloured
    by its index k (a colorbar), with the theory's values dashed and the phase boundaries marked
    (theory solid, measured hatched)."""
    order = np.argsort(tau)
    tau, median_mu = tau[order], median_mu[order]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    if predicted is not None:
        predicted = predicted[order]
        ax.plot(tau, np.abs(predicted), color="0.6", lw=0.6, ls="--")
        ax.plot([], [], color="0.6", lw=0.6, ls="--", label="theory")
    count = median_mu.shape[1]
    cmap = colormaps["viridis"]
    norm = Normalize(vmin=1, vmax=max(count, 2))
    for k in range(count):
        ax.plot(tau, np.abs(median_mu[:, k]), color=cmap(norm(k + 1)), lw=0.9)
    ax.plot([], [], color=cmap(0.5), lw=0.9, label="measured (median over anchors)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01,
                 label=r"index $k$ of the value (sorted, descending)")
    _phase_lines(ax, predicted_phases, "-", "theory")
    _phase_lines(ax, measured_phases, ":", "measured")
    values = [np.abs(median_mu)] + ([np.abs(predicted)] if predicted is not None else [])
    return _finish_tau_axes(fig, ax, path, MU_LABEL, f"Normalized spectrum over diffusion time {label}",
                            values, dpi)


def gap_width_curves(
    path: Path, tau: np.ndarray, median_mu: np.ndarray, delta: float, indices: list[int],
    predicted: np.ndarray | None = None, label: str = "", dpi: int = DPI,
) -> Path:
    """Widths of the gaps at the given positions (mu_{p-1} - mu_p) against tau: measured
    (markers) and, with `predicted` (T, D), the theory's (lines); the resolution delta dashed."""
    order = np.argsort(tau)
    tau = tau[order]
    measured = gap_widths(median_mu[order])
    pred = gap_widths(predicted[order]) if predicted is not None else None
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    cmap = colormaps["tab10"]
    for n, p in enumerate(indices):
        color = cmap(n % 10)
        ax.plot(tau, measured[:, p - 1], "o", ms=4, color=color, label=f"gap at index {p}: measured")
        if pred is not None:
            ax.plot(tau, pred[:, p - 1], "-", color=color, lw=1.2, label=f"gap at index {p}: theory")
    ax.axhline(delta, color="black", ls="--", lw=1, label=rf"resolution $\Delta$ = {delta:g}")
    shown = [measured[:, [p - 1 for p in indices]]] if indices else []
    if pred is not None and indices:
        shown.append(pred[:, [p - 1 for p in indices]])
    return _finish_tau_axes(fig, ax, path, r"gap width $\mu_{p-1} - \mu_p$ (normalized units)",
                            f"Spectral gaps over diffusion time {label}", shown, dpi)
