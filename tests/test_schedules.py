"""Schedules against theory.md section 1, computed here from the formulas directly."""

import math

import numpy as np
import pytest

from spectra.errors import SpectraError
from spectra.schedules import SCHEDULE_NAMES, Schedule


def test_ve_values():
    s = Schedule("ve")
    t = np.array([0.0 + 1e-9, 0.3, 1.0])
    np.testing.assert_allclose(s.sigma(t), 0.01 * (50 / 0.01) ** t, rtol=1e-15)
    np.testing.assert_array_equal(s.alpha(t), 1.0)
    np.testing.assert_allclose(s.tau(0.3), (0.01 * 5000**0.3) ** 2, rtol=1e-14)


def test_vp_values_and_unit_norm():
    s = Schedule("vp")
    t = np.array([1e-4, 0.2, 0.7, 1.0])
    alpha = np.exp(-(t**2) * (20 - 0.1) / 4 - t * 0.1 / 2)
    np.testing.assert_allclose(s.alpha(t), alpha, rtol=1e-15)
    np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, rtol=1e-14)
    # small t: sigma^2 ~ t * b0 (first order), computed without cancellation
    np.testing.assert_allclose(s.sigma(1e-8) ** 2, 1e-8 * 0.1, rtol=1e-6)


def test_ddpm_values():
    s = Schedule("ddpm")
    betas = np.linspace(1e-4, 2e-2, 1000)
    abar = np.cumprod(1 - betas)
    for t in (0, 1, 499, 999):
        assert s.alpha(t) == pytest.approx(math.sqrt(abar[t]), rel=1e-15)
        assert s.sigma(t) == pytest.approx(math.sqrt(1 - abar[t]), rel=1e-15)


def test_edm_and_vp_sqrt():
    edm, vs = Schedule("edm"), Schedule("vp-sqrt")
    assert edm.sigma(3.5) == 3.5 and edm.alpha(3.5) == 1.0
    assert vs.alpha(0.6) == pytest.approx(0.8, rel=1e-15) and vs.sigma(0.6) == 0.6
    assert vs.tau(0.6) == pytest.approx(0.36 / 0.64, rel=1e-14)


@pytest.mark.parametrize(
    "name,bad",
    [("ve", 0.0), ("ve", 1.5), ("vp", -0.1), ("ddpm", 1000), ("ddpm", 2.5), ("edm", 0.001),
     ("edm", 81), ("vp-sqrt", 1.0), ("vp-sqrt", 0.0)],
)
def test_out_of_range_times_are_refused(name, bad):
    with pytest.raises(SpectraError, match="t="):
        Schedule(name).validate([bad])


def test_default_ranges_are_valid():
    for name in SCHEDULE_NAMES:
        s = Schedule(name)
        s.validate(list(s.default_range))


def test_unknown_schedule_and_constant():
    with pytest.raises(SpectraError, match="unknown schedule"):
        Schedule("cosine")
    with pytest.raises(SpectraError, match="no constant"):
        Schedule("ve", {"beta_min": 1.0})


def test_roundtrip():
    s = Schedule("ve", {"sigma_max": 80.0})
    assert Schedule.from_dict(s.to_dict()) == s


def test_zero_terminal_snr_table():
    """A table ending in abar = 0 (Lin et al.'s zero terminal SNR, as diffusers'
    rescale_betas_zero_snr writes it): the last step is pure noise, with tau infinite, so the
    valid range and the default grid stop one step before it."""
    abar = np.r_[np.linspace(0.999, 0.01, 9), 0.0]
    s = Schedule("ddpm", {}, tuple(abar))
    assert s.zero_terminal_snr and s.bounds[:2] == (0.0, 8.0) and s.default_range == (1.0, 8.0)
    np.testing.assert_allclose(s.tau(8), 0.99 / 0.01)
    with pytest.raises(SpectraError, match=r"t=9 has alpha = 0 \(zero terminal SNR\).*last usable step is 8"):
        s.validate([3, 9])
    assert Schedule.from_dict(s.to_dict()) == s
    assert not Schedule("ddpm", {}, tuple(abar[:-1])).zero_terminal_snr
    for bad in (np.r_[abar[:-2], 0.0, 0.0], np.r_[abar[:-1], -0.1]):
        with pytest.raises(SpectraError, match="the last may be 0"):
            Schedule("ddpm", {}, tuple(bad))
