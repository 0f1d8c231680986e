"""Non-speech signals: coloured noise, mains hum, clicks, near-silence, and the sounds of
homes and workshops that plain coloured noise is not: rotating machines (fans, blenders,
drones: a drifting harmonic series over band noise), airflow, rain and music."""

from __future__ import annotations

import numpy as np

NOISE_KINDS = (
    "white",
    "pink",
    "brown",
    "blue",
    "hum",
    "clicks",
    "silence",
    "motor",
    "fan",
    "rain",
    "music",
)
HOUSEHOLD = ("motor", "fan", "rain", "music")
CLASSIC_NOISE = NOISE_KINDS[: -len(HOUSEHOLD)]


def kinds(
    household: bool,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Noise clip, clip bed, background event and background bed kinds; ``household``
    adds the machine, airflow, rain and music sounds to each."""
    extra = HOUSEHOLD if household else ()
    return (
        CLASSIC_NOISE + extra,
        ("white", "pink", "brown", "blue", "hum", *extra),
        ("white", "pink", "clicks", "hum", "brown", *extra),
        ("white", "pink", "brown", "hum", *(("fan", "motor") if household else ())),
    )


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


def motor(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """A rotating machine: a fundamental of 60-400 Hz drifting by a few per cent, its
    harmonics with random weights, blade-rate amplitude modulation, over band noise."""
    t = np.arange(n) / rate
    f0 = rng.uniform(60, 400) * (1 + 0.03 * np.cumsum(rng.standard_normal(n)) / np.sqrt(n))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    out = np.zeros(n)
    for h in range(1, int(rng.integers(6, 20))):
        if h * f0.mean() < 0.45 * rate:
            out += rng.uniform(0, 1) / h**0.7 * np.sin(h * phase + rng.uniform(0, 6.28))
    out *= 1 + rng.uniform(0, 0.5) * np.sin(2 * np.pi * rng.uniform(2, 30) * t)
    band = coloured(rng, n, rng.uniform(0.5, 1.5))
    return _unit_rms(_unit_rms(out) + rng.uniform(0.2, 1.5) * band)


def fan(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Airflow: noise shaped by a random low-pass tilt and one broad resonance."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    fc, peak, width = rng.uniform(300, 3000), rng.uniform(200, 2000), rng.uniform(100, 800)
    shape = 1 / np.sqrt(1 + (f / fc) ** 2) + rng.uniform(0.5, 3) * np.exp(
        -(((f - peak) / width) ** 2)
    )
    return _unit_rms(np.fft.irfft(spec * shape, n))


def rain(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Many small drops (short bright clicks, Poisson in time) over pink noise."""
    out = 0.3 * coloured(rng, n, 1.0).astype(np.float64)
    count = int(rng.uniform(50, 400) * n / rate)
    drop = np.exp(-np.arange(int(0.003 * rate)) / (0.0005 * rate))
    for pos in rng.integers(0, max(1, n - drop.size), count):
        out[pos : pos + drop.size] += rng.uniform(0.2, 2) * drop * rng.standard_normal(drop.size)
    return _unit_rms(out)


def music(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Notes of a random scale with harmonics and decaying envelopes, a beat of clicks."""
    out = np.zeros(n)
    beat = rng.uniform(0.25, 0.7)
    root = rng.uniform(110, 330)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    step = int(beat * rate)
    for start in range(0, n, step):
        for _ in range(int(rng.integers(1, 4))):
            f = root * 2 ** (rng.choice(scale) / 12) * rng.choice([0.5, 1, 2])
            m = min(n - start, int(rng.uniform(1, 3) * step))
            tt = np.arange(m) / rate
            env = np.exp(-tt / rng.uniform(0.1, 0.8))
            note = sum(np.sin(2 * np.pi * f * k * tt) / k**1.5 for k in range(1, 5))
            out[start : start + m] += env * note
        out[start : start + 40] += rng.uniform(0, 2) * rng.standard_normal(min(40, n - start))
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
    if kind in _MAKERS:
        return _MAKERS[kind](rng, n, rate)
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0, "silence": 0.0}[kind]
    return coloured(rng, n, exponent)


_MAKERS = {"motor": motor, "fan": fan, "rain": rain, "music": music}


def at_rms_dbfs(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Scale ``x`` to an RMS level in dBFS."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-12
    return (x * (10 ** (level_dbfs / 20.0) / rms)).astype(np.float32)
