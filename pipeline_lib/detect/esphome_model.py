"""Models in ESPHome's ``micro_wake_word`` format, run as ESPHome runs them.

A version-2 manifest (``wake_word``, ``model``, ``micro.probability_cutoff``,
``sliding_window_size``, ...) names a streaming INT8 TFLite file. ``pymicro-wakeword`` is
the reference loader of that format on a PC: its micro front end, its stride, its uint8
probability and its sliding mean are what the device computes. soundops runs any such
model through that code, so microWakeWord's own models and a user's are measured with the
same FAH harness as soundops' own (``soundops score --model NAME.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_lib.audio.io import audio_blocks
from pipeline_lib.base.errors import SoundopsError
from pipeline_lib.detect import decision
from pipeline_lib.detect.streaming import FileScores, Scored

RATE = 16000
FRAME_S = 0.01  # one micro front-end frame per 10 ms
WINDOW_S = 0.03  # over 30 ms: frame k (from 1) ends at k * 10 ms + 20 ms
MANIFEST_KEYS = ("probability_cutoff", "sliding_window_size")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, checked for what running it needs; one sentence naming the key else."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoundopsError(f"{path}: model manifest not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SoundopsError(f"{path}: not a JSON model manifest ({exc}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("micro"), dict):
        raise SoundopsError(f"{path}: not a micro_wake_word manifest (no 'micro' section).")
    if doc.get("version") != 2:
        raise SoundopsError(f"{path}: manifest version {doc.get('version')!r}; expected 2.")
    for key in MANIFEST_KEYS:
        if not isinstance(doc["micro"].get(key), int | float):
            raise SoundopsError(f"{path}: micro.{key} is missing or not a number.")
    cutoff, window = doc["micro"]["probability_cutoff"], doc["micro"]["sliding_window_size"]
    if not 0 < cutoff <= 1 or not (isinstance(window, int) and 1 <= window <= 1000):
        raise SoundopsError(
            f"{path}: micro.probability_cutoff {cutoff} or sliding_window_size {window} out "
            "of range (0 < cutoff <= 1, 1 <= window <= 1000)."
        )
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise SoundopsError(f"{path}: 'model' must name the .tflite file beside the manifest.")
    tflite = (path.parent / model).resolve()
    if not tflite.is_relative_to(path.parent.resolve()):
        raise SoundopsError(f"{path}: 'model' {model!r} leads outside the manifest's folder.")
    if not tflite.is_file():
        raise SoundopsError(f"{path}: its model file {tflite.name} is not beside it.")
    return doc


def to_pcm(samples: np.ndarray) -> bytes:
    """16-bit PCM bytes; a 16-bit file's samples come back exactly as the file holds them
    (libsndfile reads them as v / 32768)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


class ManifestModel:
    """One manifest's model, loaded through pymicro-wakeword."""

    def __init__(self, path: Path, refractory_s: float = 2.0) -> None:
        from pymicro_wakeword import MicroWakeWord

        self.path = path
        self.doc = read_manifest(path)
        try:
            self.mww = MicroWakeWord.from_config(path)
        except (OSError, ValueError) as exc:
            raise SoundopsError(f"{path}: pymicro-wakeword cannot load it ({exc}).") from None
        self.cutoff = float(self.doc["micro"]["probability_cutoff"])
        self.window = int(self.doc["micro"]["sliding_window_size"])
        self.refractory_s = refractory_s
        self.name = f"{self.doc.get('wake_word', path.stem)} ({path.name}, micro_wake_word)"

    def score_samples(self, blocks: Iterable[np.ndarray]) -> tuple[Scored, float]:
        """Probabilities (the sliding mean ESPHome compares to the cutoff) at each
        inference, and events; ``blocks`` of 16 kHz float samples in order."""
        from pymicro_wakeword import MicroWakeWordFeatures

        self.mww.reset()
        feats = MicroWakeWordFeatures()
        stride = int(self.mww.stride)
        times: list[float] = []
        probs: list[float] = []
        frame = 0
        samples = 0
        for block in blocks:
            samples += block.size
            pcm = to_pcm(block)
            for f in feats.process_streaming(pcm):
                frame += 1
                p = self.mww.process_streaming_prob(f)
                if frame % stride == 0:  # the model ran on this frame
                    times.append(frame * FRAME_S + WINDOW_S - FRAME_S)
                    probs.append(float(p or 0.0))
        t, s = np.asarray(times), np.asarray(probs)
        events = decision.detect(s, t, self.cutoff, self.refractory_s)
        return Scored(t, s, s.copy(), events), samples / RATE

    def score_file(self, path: Path) -> FileScores:
        scored, seconds = self.score_samples(audio_blocks(path, RATE))
        return FileScores(path, seconds, scored)
