"""The verifier as it is served: a two-layer perceptron over speech embeddings.

Plain arrays in ``verifier.npz`` (loaded with ``allow_pickle=False``) and numpy at run
time, so the service needs neither torch nor the training code. Trained by the verifier
stage (:mod:`pipeline_lib.verifier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_lib.audio.speech_embedding import DIM, RATE, STEP_SAMPLES, embedder, span_samples
from pipeline_lib.base import atomic
from pipeline_lib.base.errors import SoundopsError

HEAD_STEPS = 16  # embeddings per decision: 1.28 s of steps, 1.975 s of audio
VERIFIER_FILE = "verifier.npz"


@dataclass(frozen=True)
class Head:
    """Normalisation and the perceptron's weights; :meth:`scores` gives probabilities."""

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    threshold: float

    def scores(self, windows: np.ndarray) -> np.ndarray:
        """Probability of the target for each window ``(n, HEAD_STEPS, 96)``."""
        x = (windows.reshape(windows.shape[0], -1) - self.mean) / self.std
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        z = (h @ self.w2 + self.b2)[:, 0]
        p: np.ndarray = (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)
        return p

    def save(self, path: Path) -> None:
        with atomic.atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.savez(
                fh,
                mean=self.mean,
                std=self.std,
                w1=self.w1,
                b1=self.b1,
                w2=self.w2,
                b2=self.b2,
                threshold=np.float32(self.threshold),
            )

    @classmethod
    def load(cls, path: Path) -> Head:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("mean", "std", "w1", "b1", "w2", "b2", "threshold")}
        except (OSError, ValueError, KeyError) as exc:
            raise SoundopsError(f"{path}: not a soundops verifier ({exc}).") from None
        dim = HEAD_STEPS * DIM
        if arrays["w1"].shape[0] != dim or arrays["w2"].shape[1] != 1:
            raise SoundopsError(f"{path}: verifier weights of shape {arrays['w1'].shape}.")
        threshold = float(arrays.pop("threshold"))
        return cls(**{k: v.astype(np.float32) for k, v in arrays.items()}, threshold=threshold)


def windows_of(emb: np.ndarray) -> np.ndarray:
    """Every run of :data:`HEAD_STEPS` consecutive embeddings ``(n, HEAD_STEPS, 96)``."""
    if emb.shape[0] < HEAD_STEPS:
        return np.zeros((0, HEAD_STEPS, emb.shape[1]), np.float32)
    return np.lib.stride_tricks.sliding_window_view(emb, (HEAD_STEPS, emb.shape[1]))[:, 0]


def window_end_s(i: np.ndarray | int) -> np.ndarray:
    """The time (s) where window ``i`` of a recording ends."""
    return (np.asarray(i) * STEP_SAMPLES + span_samples(HEAD_STEPS)) / RATE


def noise_floor(x: np.ndarray) -> float:
    """The RMS of a clip's quietest 50 ms: the level its padding is made at."""
    frames = x[: x.size // 800 * 800].reshape(-1, 800) if x.size >= 800 else x[None, :]
    return float(np.sqrt(np.mean(frames**2, axis=1)).min()) + 1e-5


def clip_windows(x: np.ndarray) -> np.ndarray:
    """The windows of a short clip, padded with white noise at its floor to one window."""
    need = span_samples(HEAD_STEPS)
    if x.size < need:
        rng = np.random.default_rng(0)  # padding is part of the input: the same every time
        floor = noise_floor(x)
        extra = (rng.standard_normal(need - x.size) * floor).astype(np.float32)
        x = np.concatenate([extra[: extra.size // 2], x, extra[extra.size // 2 :]])
    return windows_of(embedder().embed(x))


def clip_score(head: Head, x: np.ndarray) -> float:
    """The highest window probability of a clip (16 kHz)."""
    w = clip_windows(x)
    return float(head.scores(w).max()) if w.shape[0] else 0.0
