"""experiments/reproduce_representation.py end to end at its smoke scale (a few dozen steps, a few
hundred samples, 3 digits noise levels: its numbers mean nothing here; the real run is committed in
docs/representation.md)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imread

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "reproduce_representation.py"


def test_representation_script_writes_its_page_and_figures(tmp_path):
    docs = tmp_path / "docs"
    res = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--docs", str(docs),
                          "--scale", "0.01"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    page = (docs / "representation.md").read_text()
    for text in ("## (a) MoLRG", "## (b) The Jacobian", "## (c) Digits", "| 0.3 | ", "| exact | ",
                 "| memorizing | ", "spectra train --data molrg.toml --network mixture --depth 3 --width 5",
                 "spectra estimate --model molrg.toml --out exact.h5 --target denoiser --method jvp",
                 "spectra angles exact.h5 --out angles-exact",
                 "spectra represent --model digits.pt --data digits.npz --feature mid"):
        assert text in page, text
    for name in ("snr", "jacobian", "digits"):
        img = imread(docs / "representation" / f"{name}.png")
        assert f"representation/{name}.png" in page
        assert np.any(img[..., :3] < 0.5, axis=-1).mean() > 0.005, name  # something was drawn
