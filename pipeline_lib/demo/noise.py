"""Non-speech signals: coloured noise, mains hum, clicks and near-silence."""

from __future__ import annotations

import numpy as np

NOISE_KINDS = ("white", "pink", "brown", "blue", "hum", "clicks", "silence")


def coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f^exponent (0 white, 1 pink, 2 brown, -1 blue), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spec.size, dtype=np.float64)
    freqs[0] = 1.0
    spec *= freqs ** (-exponent / 2.0)
    out = np.fft.irfft(spec, n)
    return _unit_rms(out)


def hum(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Mains hum at 50 or 60 Hz with decaying random harmonics, unit RMS."""
    base = rng.choice([50.0, 60.0])
    t = np.arange(n) / rate
    out = np.zeros(n)
    for h in range(1, 8):
        out += rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.28))
    out += 0.05 * rng.standard_normal(n)
    return _unit_rms(out)


def clicks(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Sparse decaying impulses (keyboard, relay, crackle), unit RMS."""
    out = np.zeros(n)
    count = max(1, int(rng.uniform(2, 15) * n / rate))
    decay = np.exp(-np.arange(int(0.01 * rate)) / (0.001 * rate))
    for pos in rng.integers(0, max(1, n - decay.size), count):
        out[pos : pos + decay.size] += rng.uniform(-1, 1) * decay * rng.standard_normal(decay.size)
    out += 0.01 * rng.standard_normal(n)
    return _unit_rms(out)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)
    return scaled


def make_noise(rng: np.random.Generator, kind: str, n: int, rate: int) -> np.ndarray:
    """One noise kind at unit RMS (``silence`` is white noise; the caller sets its level)."""
    if kind == "hum":
        return hum(rng, n, rate)
    if kind == "clicks":
        return clicks(rng, n, rate)
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0, "silence": 0.0}[kind]
    return coloured(rng, n, exponent)


def at_rms_dbfs(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Scale ``x`` to an RMS level in dBFS."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-12
    return (x * (10 ** (level_dbfs / 20.0) / rms)).astype(np.float32)
