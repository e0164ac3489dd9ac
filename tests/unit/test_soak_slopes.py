"""The soak's slope measure (`tests/e2e/test_soak.py`), on synthetic RSS series: what a trimmed process looks like."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.e2e.test_soak import SAMPLE_EVERY_SECONDS, block_mean_slope_mib_per_min, rss_slope_mib_per_min

MIB = 2**20


def _series(minutes: float, trend_mib_per_min: float, sawtooth_mib: float, period_seconds: float, noise_mib: float):
    rng = np.random.default_rng(0)
    t = np.arange(0, minutes * 60, SAMPLE_EVERY_SECONDS) + 900.0
    # A trim drops RSS by `sawtooth_mib`, the freed pages are faulted back in over the period that follows.
    phase = (t % period_seconds) / period_seconds
    mib = 880 + trend_mib_per_min * (t - t[0]) / 60 - sawtooth_mib * (1 - phase) + rng.normal(0, noise_mib, t.size)
    return list(t), list(mib * MIB)


def test_block_means_recover_a_small_trend_under_a_trim_sawtooth():
    # 2 hours, +0.02 MiB/min under a 12-MiB sawtooth whose period (130 s) is not a multiple of the 30-s sampling.
    t, rss = _series(120, 0.02, 12.0, 130.0, 0.5)
    slope, error = block_mean_slope_mib_per_min(t, rss)
    assert slope == pytest.approx(0.02, abs=0.01)
    assert 0 < error < 0.01
    assert rss_slope_mib_per_min(t, rss) == pytest.approx(0.02, abs=0.02)


def test_the_error_grows_with_wandering_block_means():
    quiet = block_mean_slope_mib_per_min(*_series(120, 0.0, 0.0, 130.0, 0.1))
    noisy = block_mean_slope_mib_per_min(*_series(120, 0.0, 0.0, 130.0, 8.0))
    assert noisy[1] > 10 * quiet[1]
    assert abs(noisy[0]) < 4 * noisy[1]  # no trend: the slope is within its error


def test_a_short_window_gets_a_slope_but_no_error():
    slope, error = block_mean_slope_mib_per_min(*_series(25, 0.1, 0.0, 130.0, 0.1))  # 2 blocks
    assert slope == pytest.approx(0.1, abs=0.02) and math.isnan(error)
    slope, error = block_mean_slope_mib_per_min(*_series(8, 0.1, 0.0, 130.0, 0.1))  # no full block
    assert slope == pytest.approx(0.1, abs=0.05) and math.isnan(error)
