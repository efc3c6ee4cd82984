"""experiments/reproduce_memorization.py end to end at its smoke scale (two training-set sizes,
a few dozen steps, 20 samples per model: its numbers mean nothing here; the real run is committed
in docs/memorization.md)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imread

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "reproduce_memorization.py"


def test_memorization_script_writes_its_page_and_figures(tmp_path):
    docs = tmp_path / "docs"
    res = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--docs", str(docs),
                          "--scale", "0.002", "--n-times", "3"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    page = (docs / "memorization.md").read_text()
    for text in ("## (a) Digits", "## (b) The isotropic mixture", "## (c) Across training",
                 "| 8 | ", "| 32 | ", "| 100 | ", "| 200 | ", "0.660 / 0.774 / 0.830",
                 "spectra train --data digits.npz:x --n-train 8 --out digits8.pt --steps 12",
                 "spectra crossover --json", "spectra estimate --model digits32-snapshots --out snapshots"):
        assert text in page, text
    for name in ("digits", "crossover", "snapshots", "digits8-nearest", "digits32-nearest"):
        img = imread(docs / "memorization" / f"{name}.png")
        assert f"memorization/{name}.png" in page
        assert np.any(img[..., :3] < 0.5, axis=-1).mean() > 0.005, name  # something was drawn
