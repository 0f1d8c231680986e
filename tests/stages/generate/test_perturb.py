"""Perturbations of the synthetic corpus: deterministic, and each does what it claims."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pipeline_lib.stages.generate import perturb

RATE = 22050


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / RATE)[int(np.argmax(spec))])


def _gain_db(x: np.ndarray, y: np.ndarray) -> float:
    core = slice(x.size // 4, 3 * x.size // 4)  # past the filters' transients
    return float(20 * np.log10(np.std(y[core]) / np.std(x[core])))


def test_vocal_tract_scales_pitch_and_duration() -> None:
    x = _tone(500.0)
    y = perturb.vocal_tract(x, Fraction(5, 4))
    assert y.size == pytest.approx(x.size * 4 / 5, abs=2)
    assert _peak_hz(y) == pytest.approx(625.0, abs=3)
    assert perturb.vocal_tract(x, Fraction(1)).tobytes() == x.tobytes()


def test_vtl_factor_stays_in_range_on_a_1_40_grid() -> None:
    rng = np.random.default_rng(0)
    factors = [perturb.vtl_factor(rng, 0.85, 1.2) for _ in range(200)]
    assert all(Fraction(34, 40) <= f <= Fraction(48, 40) for f in factors)
    assert all((f * perturb.VTL_STEP).denominator == 1 for f in factors)
    assert len(set(factors)) > 5


def test_telephone_band_passes_speech_band_and_cuts_the_rest() -> None:
    for freq, passed in ((100.0, False), (1000.0, True), (6000.0, False)):
        x = _tone(freq)
        g = _gain_db(x, perturb.channel(x, RATE, "telephone", np.random.default_rng(1)))
        assert (g > -3) if passed else (g < -20), (freq, g)


def test_narrowband_codec_removes_everything_above_4_khz() -> None:
    rng = np.random.default_rng(2)
    low, high = _tone(800.0), _tone(6000.0)
    assert _gain_db(low, perturb.channel(low, RATE, "narrowband", rng)) > -1
    assert _gain_db(high, perturb.channel(high, RATE, "narrowband", rng)) < -40


def test_mulaw_and_clipping_keep_the_signal_and_its_peak() -> None:
    x = _tone(440.0)
    m = perturb.channel(x, RATE, "mulaw", np.random.default_rng(3))
    assert np.corrcoef(x, m)[0, 1] > 0.999 and not np.array_equal(x, m)
    c = perturb.channel(x, RATE, "clip", np.random.default_rng(3))
    assert np.abs(c).max() == pytest.approx(np.abs(x).max(), rel=1e-4)
    # clipped: a flat top holds many samples at the peak
    assert np.mean(np.abs(c) >= 0.999 * np.abs(c).max()) > 0.05


def test_every_channel_is_deterministic_for_a_seed() -> None:
    x = np.random.default_rng(4).standard_normal(RATE).astype(np.float32) * 0.1
    for kind in perturb.CHANNELS:
        a = perturb.channel(x, RATE, kind, np.random.default_rng(7))
        b = perturb.channel(x, RATE, kind, np.random.default_rng(7))
        assert a.dtype == np.float32 and a.shape == x.shape and a.tobytes() == b.tobytes(), kind


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown channel 'radio'"):
        perturb.channel(_tone(100.0), RATE, "radio", np.random.default_rng(0))
