"""Audio I/O and signal measures: soundfile for decoding, torchaudio for resampling."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as taf

from pipeline_lib.base.errors import AudioError

EPS = 1e-12


@dataclass(frozen=True)
class Decoded:
    """Mono float32 samples in [-1, 1] at ``rate``, plus what the file originally was."""

    samples: np.ndarray
    rate: int
    orig_rate: int
    orig_channels: int


def read_audio(path: Path) -> Decoded:
    """Decode any format libsndfile reads (wav, flac, ogg, mp3) and downmix to mono.

    Raises :class:`AudioError` naming the file when it cannot be decoded, is empty, or holds
    NaN/inf samples.
    """
    return decode_audio(str(path), str(path))


def decode_audio(source: str | BinaryIO, name: str) -> Decoded:
    """:func:`read_audio` for a path or an open binary file (an upload); ``name`` is what
    the error sentence calls it."""
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{name}: undecodable audio ({short_error(exc)}).") from None
    if data.shape[0] == 0:
        raise AudioError(f"{name}: empty audio (no samples).")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: audio holds NaN or infinite samples.")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return Decoded(np.ascontiguousarray(mono, dtype=np.float32), rate, rate, data.shape[1])


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


@lru_cache(maxsize=16)
def _kernel_key(orig: int, new: int) -> tuple[int, int]:
    g = np.gcd(orig, new)
    return orig // g, new // g


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc); a no-op at equal rates."""
    if orig_rate == new_rate:
        return samples
    orig, new = _kernel_key(orig_rate, new_rate)
    with torch.inference_mode():
        out = taf.resample(torch.from_numpy(samples), orig, new)
    result: np.ndarray = out.numpy().astype(np.float32, copy=False)
    return result


def dbfs(value: float) -> float:
    """Amplitude to decibels relative to full scale, floored at -200 dB."""
    return float(20.0 * np.log10(max(value, EPS))) if value > 0 else -200.0


@dataclass(frozen=True)
class Levels:
    peak_dbfs: float
    rms_dbfs: float
    clipped_fraction: float


def levels(samples: np.ndarray, clip_level: float) -> Levels:
    """Peak, RMS and the share of samples at or beyond ``clip_level`` (full scale = 1)."""
    absx = np.abs(samples)
    peak = float(absx.max()) if absx.size else 0.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if absx.size else 0.0
    clipped = float(np.count_nonzero(absx >= clip_level)) / max(absx.size, 1)
    return Levels(dbfs(peak), dbfs(rms), clipped)


def normalize_peak(samples: np.ndarray, target_dbfs: float | None) -> np.ndarray:
    """Remove DC and scale so the peak sits at ``target_dbfs`` (unchanged when None)."""
    out = samples - np.float32(samples.mean())
    if target_dbfs is None:
        return out.astype(np.float32, copy=False)
    peak = float(np.abs(out).max())
    if peak <= EPS:
        return out.astype(np.float32, copy=False)
    gain = (10.0 ** (target_dbfs / 20.0)) / peak
    scaled: np.ndarray = (out * gain).astype(np.float32, copy=False)
    return scaled


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Quantise to 16-bit PCM with saturation."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)


def content_id(pcm: np.ndarray, rate: int) -> str:
    """Stable id of the normalised audio: identical sound gets the same id whatever its file."""
    h = hashlib.sha256()
    h.update(str(rate).encode())
    h.update(np.ascontiguousarray(pcm).tobytes())
    return h.hexdigest()[:20]


def write_flac(path: Path, pcm: np.ndarray, rate: int) -> None:
    """Write 16-bit mono FLAC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm, rate, format="FLAC", subtype="PCM_16")


def audio_blocks(path: Path, rate: int, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """Mono float32 blocks of a file of any length at ``rate``, resampled block by block
    with enough context on each side that the joins are seamless."""
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: undecodable audio ({exc}).") from None
    with handle as f:
        if f.frames == 0:
            raise AudioError(f"{path}: empty audio (no samples).")
        orig = f.samplerate
        block = max(1, int(block_s * orig))
        ctx = 0 if orig == rate else max(64, orig // 100)  # 10 ms of context for the filter
        pos = 0
        while pos < f.frames:
            lo = max(0, pos - ctx)
            try:  # a truncated or corrupt body fails here, after a readable header
                f.seek(lo)
                data = f.read(
                    min(f.frames, pos + block + ctx) - lo, dtype="float32", always_2d=True
                )
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(f"{path}: undecodable audio ({exc}).") from None
            if not np.isfinite(data).all():
                raise AudioError(f"{path}: audio holds NaN or infinite samples.")
            mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            if orig == rate:
                yield mono
            else:
                out = resample(mono, orig, rate)
                a = round((pos - lo) * rate / orig)
                b = round((min(f.frames, pos + block) - lo) * rate / orig)
                yield out[a:b]
            pos += block
