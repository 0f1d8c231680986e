"""Front ends: log-mel (torchaudio) and the TFLite Micro ``micro_speech`` front end.

Both turn 16 kHz mono audio into a (frames, bins) float32 array with a 10 ms step, so a
window of ``window_s`` seconds always has the same number of frames. The micro front end
(40 channels, 30 ms window, noise reduction and PCAN, via ``pymicro-features``) computes
exactly what the firmware computes, so a model exported for a microcontroller sees on the
bench the features it will see on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torchaudio

from pipeline_lib.base.params import FeatureParams

MICRO_BINS = 40
MICRO_WINDOW_MS = 30
MICRO_STEP_MS = 10


@dataclass(frozen=True)
class FrameSpec:
    """Geometry shared by every front end: step and window in samples, bins per frame."""

    rate: int
    step: int
    window: int
    bins: int

    def frames_for(self, n_samples: int) -> int:
        return 0 if n_samples < self.window else 1 + (n_samples - self.window) // self.step


def frame_spec(cfg: FeatureParams, rate: int) -> FrameSpec:
    if cfg.front_end == "micro":
        return FrameSpec(
            rate, rate * MICRO_STEP_MS // 1000, rate * MICRO_WINDOW_MS // 1000, MICRO_BINS
        )
    lm = cfg.logmel
    return FrameSpec(rate, int(rate * lm.hop_ms / 1000), int(rate * lm.win_ms / 1000), lm.n_mels)


def window_frames(cfg: FeatureParams, rate: int) -> int:
    """Frames in one model input window."""
    return frame_spec(cfg, rate).frames_for(round(cfg.window_s * rate))


@lru_cache(maxsize=4)
def _mel(rate: int, win: int, hop: int, n_mels: int, f_min: float, f_max: float) -> torch.nn.Module:
    # n_fft = window, so frame count matches the micro front end (no centre padding)
    mel: torch.nn.Module = torchaudio.transforms.MelSpectrogram(
        sample_rate=rate,
        n_fft=win,
        win_length=win,
        hop_length=hop,
        f_min=f_min,
        f_max=f_max,
        n_mels=n_mels,
        power=2.0,
        center=False,
        norm="slaney",
        mel_scale="slaney",
    )
    return mel


def logmel(samples: np.ndarray, cfg: FeatureParams, rate: int) -> np.ndarray:
    """Log mel energies, (frames, n_mels) float32."""
    spec = frame_spec(cfg, rate)
    if samples.size < spec.window:
        return np.zeros((0, spec.bins), np.float32)
    lm = cfg.logmel
    mel = _mel(rate, spec.window, spec.step, lm.n_mels, lm.f_min, lm.f_max)
    with torch.inference_mode():
        out = mel(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)))
    result: np.ndarray = torch.log(out + 1e-6).T.contiguous().numpy()
    return result


def to_pcm_bytes(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as the little-endian 16-bit PCM a device's ADC delivers."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes()


def micro(samples: np.ndarray, rate: int) -> np.ndarray:
    """The TFLite Micro front end over 16-bit PCM, (frames, 40) float32, fresh state."""
    from pymicro_features import MicroFrontend

    if rate != 16000:
        raise ValueError(f"the micro_speech front end needs 16 kHz audio, got {rate} Hz")
    pcm = to_pcm_bytes(samples)
    frontend = MicroFrontend()
    frames: list[list[float]] = []
    chunk = 2 * rate * MICRO_STEP_MS // 1000
    pos = 0
    while pos + chunk <= len(pcm):
        out = frontend.process_samples(pcm[pos : pos + chunk])
        pos += 2 * out.samples_read
        if out.features:
            frames.append(out.features)
    if not frames:
        return np.zeros((0, MICRO_BINS), np.float32)
    return np.asarray(frames, dtype=np.float32)


def compute(samples: np.ndarray, cfg: FeatureParams, rate: int) -> np.ndarray:
    """Features of ``samples`` with the configured front end."""
    return micro(samples, rate) if cfg.front_end == "micro" else logmel(samples, cfg, rate)
