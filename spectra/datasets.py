"""Real data that ships offline: scikit-learn's 8 x 8 handwritten digits (`spectra dataset digits`).

The digits (Alpaydin & Kaynak, UCI, 1998; bundled with scikit-learn, so nothing is downloaded) are
1,797 grey images of 8 x 8 pixels with values 0..16 and their labels 0..9. They are returned as
x = v / 8 - 1 in [-1, 1] (the range image diffusion models are trained on), shape (N, 1, 8, 8)
(D = 64), with labels (N,).
"""

from __future__ import annotations

import numpy as np

from spectra.errors import SpectraError

#: the datasets `spectra dataset` writes
DATASETS = ("digits",)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(x (1797, 1, 8, 8) float64 in [-1, 1], labels (1797,) int64) of scikit-learn's digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SpectraError("the digits come with scikit-learn: "
                           "pip install 'diffusion-spectra[data]'") from None
    bunch = load_digits()
    return bunch.images[:, None].astype(np.float64) / 8.0 - 1.0, bunch.target.astype(np.int64)
