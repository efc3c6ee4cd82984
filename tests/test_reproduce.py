"""experiments/reproduce_synthetic.py end to end at a tiny scale (its numbers mean nothing here:
the networks train for a few dozen steps; the real run is committed in docs/reproduction.md)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imread

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "reproduce_synthetic.py"


def test_reproduction_script_writes_its_page_and_figures(tmp_path):
    docs = tmp_path / "docs"
    res = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--docs", str(docs),
                          "--scale", "0.002", "--n-times", "3"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    page = (docs / "reproduction.md").read_text()
    for row in ("demo: dimension at the smallest tau", "demo: intermediate gap tau_max",
                "unequal (30 of variance 1, 10 of 0.05): gap index | 30 (tau_max",
                "swapped (30 of 0.05, 10 of 1): gap index | 10 (tau_max",
                "memorization: dimension at the smallest tau", "normal directions at the smallest tau"):
        assert row in page, row
    assert "spectra train --data demo.toml --out demo.pt --steps 120 --overwrite --quiet" in page
    assert "spectra train --data demo.toml --out memorize.pt --steps 240 --overwrite --n-train 20" in page
    for name in ("memorization", "normal-bulk", "demo-spectrum", "demo-trajectories", "demo-gaps"):
        img = imread(docs / "reproduction" / f"{name}.png")
        assert f"reproduction/{name}.png" in page
        assert np.any(img[..., :3] < 0.5, axis=-1).mean() > 0.005, name  # lines were drawn
