"""Perturbations that turn one synthetic voice into many speakers and microphones.

Applied to every spoken clip of the corpus, targets and negatives alike, so that neither
a voice nor a channel is a cue for the label:

- **vocal-tract length**: resampling by a factor moves pitch and formants together (a
  shorter tract: higher formants), as a child's or a large man's voice differs from the
  synthetic speaker's; the duration changes by the inverse factor;
- **channel**: the response of the microphone and the line: telephone band, a cheap
  microphone's low-pass, a small speaker's high-pass, a peaking EQ, 8-bit mu-law, an 8 kHz
  codec round trip, or clipping.

Each is a pure function of its input and the random generator it is given.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal

CHANNELS = ("telephone", "lowpass", "highpass", "eq", "mulaw", "narrowband", "clip")
VTL_STEP = 40  # the factor is a multiple of 1/40: short polyphase filters, exact ratios


def vtl_factor(rng: np.random.Generator, lo: float, hi: float) -> Fraction:
    """A resampling factor in [lo, hi], as a ratio of small integers."""
    return Fraction(round(rng.uniform(lo, hi) * VTL_STEP), VTL_STEP)


def vocal_tract(x: np.ndarray, factor: Fraction) -> np.ndarray:
    """Play ``x`` ``factor`` times faster: pitch and formants scale by ``factor``."""
    if factor == 1:
        return x.astype(np.float32)
    # resample to 1/factor of the samples, played at the same rate
    out = signal.resample_poly(x.astype(np.float64), factor.denominator, factor.numerator)
    return np.asarray(out, dtype=np.float32)


def _sos(kind: str, rate: int, rng: np.random.Generator) -> np.ndarray:
    nyq = rate / 2
    if kind == "telephone":
        lo, hi = rng.uniform(250, 400), rng.uniform(3000, 3600)
        return np.asarray(signal.butter(4, [lo / nyq, hi / nyq], "bandpass", output="sos"))
    if kind == "lowpass":
        fc = rng.uniform(2500, min(7000, 0.9 * nyq))
        return np.asarray(signal.butter(4, fc / nyq, "lowpass", output="sos"))
    fc = rng.uniform(150, 600)  # highpass: a small loudspeaker or laptop microphone
    return np.asarray(signal.butter(2, fc / nyq, "highpass", output="sos"))


def _peaking(x: np.ndarray, rate: int, rng: np.random.Generator, bands: int = 3) -> np.ndarray:
    """A few random peaking-EQ bands of +-9 dB (RBJ biquads)."""
    y = x.astype(np.float64)
    for _ in range(bands):
        f0 = float(np.exp(rng.uniform(np.log(150), np.log(0.8 * rate / 2))))
        gain_db, q = rng.uniform(-9, 9), rng.uniform(0.5, 2.5)
        a = 10 ** (gain_db / 40)
        w0 = 2 * np.pi * f0 / rate
        alpha = np.sin(w0) / (2 * q)
        b = [1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a]
        den = [1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a]
        y = signal.lfilter(b, den, y)
    return y.astype(np.float32)


def _mulaw(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    peak = float(np.abs(x).max()) or 1.0
    v = x / peak
    enc = np.sign(v) * np.log1p(mu * np.abs(v)) / np.log1p(mu)
    q = np.round((enc + 1) / 2 * mu) / mu * 2 - 1  # 8 bits
    dec = np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu
    return np.asarray(dec * peak, dtype=np.float32)


def channel(x: np.ndarray, rate: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``x`` through one microphone or line response (``kind`` from :data:`CHANNELS`)."""
    if x.size == 0:
        return x.astype(np.float32)
    if kind in ("telephone", "lowpass", "highpass"):
        return np.asarray(signal.sosfilt(_sos(kind, rate, rng), x), dtype=np.float32)
    if kind == "eq":
        return _peaking(x, rate, rng)
    if kind == "mulaw":
        return _mulaw(x)
    if kind == "narrowband":  # an 8 kHz codec round trip: nothing above 4 kHz survives
        down = signal.resample_poly(x.astype(np.float64), 8000, rate)
        return np.asarray(signal.resample_poly(down, rate, 8000)[: x.size], dtype=np.float32)
    if kind == "clip":  # an overdriven input stage
        peak = float(np.abs(x).max()) or 1.0
        drive = 10 ** (rng.uniform(3, 12) / 20)
        return (np.clip(x / peak * drive, -1.0, 1.0) * peak).astype(np.float32)
    raise ValueError(f"unknown channel {kind!r}")
