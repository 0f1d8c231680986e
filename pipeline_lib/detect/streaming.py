"""The streaming detector: audio in, window scores and events out, in bounded memory.

Evaluation, mining, ``soundops score`` and the service all run audio through
:class:`StreamingDetector`. It keeps the front end's state, the frames of the window in
progress, the last scores for smoothing and the event rule's state (see
:mod:`pipeline_lib.detector`), so feeding a recording in pieces of any size gives the
same scores and events as feeding it whole, and memory depends on the piece size only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.audio import features
from pipeline_lib.audio.io import audio_blocks
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.base.params import FeatureParams
from pipeline_lib.detect import decision
from pipeline_lib.detect.decision import DecisionRule, EventState
from pipeline_lib.detect.runtimes import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Temperature and decision rule of one preset, from ``calibration.json``."""

    temperature: float
    rule: DecisionRule
    preset: str
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any], preset: str | None = None) -> Calibration:
        name = preset or str(data["preset"])
        presets = data.get("presets", {})
        if name not in presets:
            raise SoundopsError(
                f"calibration preset '{name}' does not exist; expected one of "
                f"{', '.join(presets) or 'none'}."
            )
        sel = presets[name]
        rule = DecisionRule(
            hop_frames=int(sel["hop_frames"]),
            smoothing=int(sel["smoothing"]),
            threshold=float(sel["threshold"]),
            refractory_s=float(sel["refractory_s"]),
        )
        return cls(float(data["temperature"]), rule, name, data)

    @classmethod
    def load(cls, path: Path, preset: str | None = None) -> Calibration:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SoundopsError(f"{path}: calibration file not found.") from None
        except json.JSONDecodeError as exc:
            raise SoundopsError(f"{path}: not valid JSON ({exc}).") from None
        try:
            return cls.from_dict(data, preset)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SoundopsError):
                raise
            raise SoundopsError(f"{path}: not a soundops calibration file ({exc}).") from None


class FrontEnd:
    """The configured front end, fed audio in pieces; emits each frame once it is complete."""

    def __init__(self, cfg: FeatureParams, rate: int) -> None:
        self.cfg, self.rate = cfg, rate
        self.fs = features.frame_spec(cfg, rate)
        self._pending = np.zeros(0, np.float32)
        self._micro: Any = None
        self._pcm = b""
        if cfg.front_end == "micro":
            from pymicro_features import MicroFrontend

            if rate != 16000:
                raise SoundopsError(f"the micro_speech front end needs 16 kHz audio, got {rate}")
            self._micro = MicroFrontend()

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Frames completed by ``samples`` (float32 in [-1, 1]), shape (k, bins)."""
        if self._micro is not None:
            return self._push_micro(samples)
        buf = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = self.fs.frames_for(buf.size)
        if n == 0:
            self._pending = buf
            return np.zeros((0, self.fs.bins), np.float32)
        used = buf[: (n - 1) * self.fs.step + self.fs.window]
        self._pending = buf[n * self.fs.step :]
        return features.logmel(used, self.cfg, self.rate)

    def _push_micro(self, samples: np.ndarray) -> np.ndarray:
        pcm = self._pcm + features.to_pcm_bytes(samples)
        chunk = 2 * self.fs.step
        frames: list[list[float]] = []
        pos = 0
        while pos + chunk <= len(pcm):
            out = self._micro.process_samples(pcm[pos : pos + chunk])
            pos += 2 * out.samples_read
            if out.features:
                frames.append(out.features)
        self._pcm = pcm[pos:]
        if not frames:
            return np.zeros((0, self.fs.bins), np.float32)
        return np.asarray(frames, dtype=np.float32)


@dataclass
class Scored:
    """Windows scored by one push: end times (s), scores, smoothed scores, and events."""

    times: np.ndarray
    scores: np.ndarray
    smoothed: np.ndarray
    events: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Scored:
        z = np.zeros(0)
        return cls(z, z.copy(), z.copy(), [])

    @classmethod
    def join(cls, parts: list[Scored]) -> Scored:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.times for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.smoothed for p in parts]),
            [e for p in parts for e in p.events],
        )


class StreamingDetector:
    """One audio stream's detector state: front end, frame buffer, smoothing, events."""

    def __init__(self, scorer: Scorer, calibration: Calibration, batch: int = 256) -> None:
        self.scorer, self.cal, self.batch = scorer, calibration, batch
        spec = scorer.spec
        self.frames, self.bins = spec.frames, spec.bins
        self.frontend = FrontEnd(spec.feature_params, spec.rate)
        self._buf = np.zeros((0, spec.bins), np.float32)
        self._buf_start = 0  # global index of _buf[0]
        self._next = 0  # global start frame of the next window
        self._tail = np.zeros(0)  # the last (smoothing - 1) scores
        self._count = 0  # windows scored so far
        self._state = EventState()
        self.seconds = 0.0

    @property
    def rule(self) -> DecisionRule:
        return self.cal.rule

    def push(self, samples: np.ndarray) -> Scored:
        """Feed audio (mono float32 at the model's rate); score every window it completes."""
        self.seconds += samples.size / self.scorer.spec.rate
        new = self.frontend.push(samples)
        if new.size:
            self._buf = np.concatenate([self._buf, new])
        end = self._buf_start + len(self._buf)
        starts = np.arange(self._next, end - self.frames + 1, self.rule.hop_frames)
        if starts.size == 0:
            return Scored.empty()
        view = np.lib.stride_tricks.sliding_window_view(self._buf, self.frames, axis=0)
        local = starts - self._buf_start
        raw = [
            self.scorer.logits(
                np.ascontiguousarray(view[local[i : i + self.batch]].transpose(0, 2, 1))
            )
            for i in range(0, local.size, self.batch)
        ]
        self._next = int(starts[-1]) + self.rule.hop_frames
        drop = self._next - self._buf_start
        self._buf = self._buf[drop:]
        self._buf_start += drop
        times = (starts + self.frames) * decision.STEP_S
        return self._decide(np.concatenate(raw), times)

    def finish(self) -> Scored:
        """End of stream: a recording shorter than one window is scored once, zero-padded
        (as :func:`pipeline_lib.detector.window_logits` does), so every file gets a score."""
        if self._count or len(self._buf) == 0:
            return Scored.empty()
        pad = np.zeros((self.frames - len(self._buf), self.bins), np.float32)
        window = np.concatenate([self._buf, pad])[None]
        return self._decide(
            self.scorer.logits(np.ascontiguousarray(window)),
            np.array([self.frames * decision.STEP_S]),
        )

    def _decide(self, raw: np.ndarray, times: np.ndarray) -> Scored:
        scores = decision.event_probability(raw, self.cal.temperature)
        k = self.rule.smoothing
        # The tail holds min(k - 1, windows seen) scores, so a window's position in the
        # joined array caps its average exactly where the whole-recording average would.
        joined = np.concatenate([self._tail, scores])
        smoothed = decision.smooth(joined, k)[self._tail.size :]
        self._tail = joined[-(k - 1) :] if k > 1 else np.zeros(0)
        self._count += scores.size
        events = decision.events_from(
            smoothed, times, self.rule.threshold, self.rule.refractory_s, self._state
        )
        return Scored(times, scores, smoothed, events)


@dataclass
class FileScores:
    path: Path
    duration_s: float
    scored: Scored


def score_file(
    path: Path, scorer: Scorer, calibration: Calibration, block_s: float = 30.0
) -> FileScores:
    """Run one file of any length through a fresh :class:`StreamingDetector`."""
    det = StreamingDetector(scorer, calibration)
    parts = [det.push(b) for b in audio_blocks(path, scorer.spec.rate, block_s)]
    parts.append(det.finish())
    return FileScores(path, det.seconds, Scored.join(parts))
